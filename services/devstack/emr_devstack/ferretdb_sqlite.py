"""An `_id` lookup index for FerretDB 1.x on SQLite, where FerretDB's own cannot serve lookups.

FerretDB 1.24 pushes a filter that is exactly ``{_id: <string>}`` down to SQLite as
``WHERE _ferretdb_sjson->'$._id' = ?``, but indexes ``_id`` as ``_ferretdb_sjson->"_id"``. SQLite
matches expression indexes by their text, so its plan for every lookup is ``SCAN <table>``: each
lookup reads the whole table (explain shows the plan). An index on the expression FerretDB queries
turns that into ``SEARCH <table> USING INDEX``, as MongoDB's built-in ``_id`` index does. FerretDB
keeps its own index list in its metadata table and ignores this one; dropping the collection drops it.
Each of FerretDB's pooled SQLite connections sees the new index from its next statement on (an
EXPLAIN alone may still show the plan of the schema that connection loaded before).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

INDEX_SUFFIX = "_emr_id_lookup"
# The expression FerretDB's SQLite backend filters `_id` with (internal/backends/sqlite/metadata).
ID_EXPRESSION = "_ferretdb_sjson->'$._id'"


def add_id_lookup_indexes(data_dir: Path) -> int:
    """Indexes ``_id`` lookups in every collection table of FerretDB's SQLite files under
    ``data_dir``; returns how many indexes it created. Safe while FerretDB runs (WAL mode; a
    collection created later needs another call)."""
    created = 0
    for database in sorted(data_dir.glob("*.sqlite")):
        connection = sqlite3.connect(database, timeout=30)
        try:
            tables = [row[0] for row in connection.execute("SELECT table_name FROM _ferretdb_collections")]
            existing = {
                row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'index'")
            }
            for table in tables:
                index = f"{table}{INDEX_SUFFIX}"
                if index not in existing:
                    connection.execute(f'CREATE INDEX IF NOT EXISTS "{index}" ON "{table}" ({ID_EXPRESSION})')
                    created += 1
            connection.commit()
        except sqlite3.OperationalError as error:
            if "no such table: _ferretdb_collections" not in str(error):
                raise
        finally:
            connection.close()
    return created
