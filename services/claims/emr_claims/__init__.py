"""Health-insurance (BHYT) claims in the layout of Decision 130/QĐ-BYT as amended by 4750/QĐ-BYT and
3176/QĐ-BYT: the field tables (``spec``), how values are written and read (``formats``) and a strict
validator of a whole GIAMDINHHS submission (``validate``). Pure: the only I/O is reading the package's
own table files."""
