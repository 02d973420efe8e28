-- For bench/identity_speed.py --after-load on FerretDB 1.x with the PostgreSQL backend: FerretDB
-- filters `_id` with `_jsonb->'_id' @> value`, which its own btree index on `_jsonb->'_id'` cannot
-- serve (FerretDB issue #4646), so every lookup is a sequential scan. A GIN index on the same
-- expression serves it, as MongoDB's built-in _id index does. Run as the database owner:
--   psql "postgres://USER@127.0.0.1:PORT/DATABASE" -f bench/ferretdb_pg_id_indexes.sql
DO $$
DECLARE
  t record;
BEGIN
  FOR t IN
    SELECT schemaname, tablename FROM pg_tables
    WHERE schemaname NOT IN ('pg_catalog', 'information_schema') AND tablename NOT LIKE '\_ferretdb%'
  LOOP
    EXECUTE format(
      'CREATE INDEX IF NOT EXISTS %I ON %I.%I USING gin ((_jsonb -> %L))',
      left(t.tablename, 50) || '_id_gin', t.schemaname, t.tablename, '_id'
    );
  END LOOP;
END $$;
