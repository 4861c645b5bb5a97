"""The users' data after a migration, against the final backup taken just before it: every row still
there with the same values in every column the old schema had, proven by the database's own
checksums over exactly those columns (one pass per table, so the cost grows with the data as a dump's
does). Columns and tables the migration adds are not judged; what it drops or rewrites is named."""

from __future__ import annotations

from airlock.databases.base import Columns, Database, TableStats

SCHEMA_VERSION_TABLES = ("alembic_version",)
"""The migration tool's own bookkeeping: rewritten by every migration, never users' data."""
NAMED = 10
"""How many problems a message lists (the rest are counted)."""


def shared_columns(before: Columns, now: Columns) -> Columns:
    """Per table of the old schema that still exists: its old columns that still exist, in their old
    order (what both schemas share)."""
    shared = {table: [column for column in columns if column in now[table]]
              for table, columns in before.items() if table in now and table not in SCHEMA_VERSION_TABLES}
    return {table: columns for table, columns in shared.items() if columns}


def migration_losses(before: TableStats, before_columns: Columns, now: TableStats, now_columns: Columns,
                     rewritten: tuple[str, ...] = ()) -> list[str]:
    """What the migration lost or changed of the old schema's data, in words (empty: nothing).
    Tables in `rewritten` are the vendor's own rewrites: only that none of their rows went is checked."""
    problems = []
    for table, columns in sorted(before_columns.items()):
        if table in SCHEMA_VERSION_TABLES:
            continue
        rows = int(before[table]["rows"]) if table in before else 0
        if table not in now:  # gone, or none of its old columns is left
            if rows and table not in rewritten:
                gone = "is gone" if table not in now_columns else f"lost all its columns ({', '.join(columns)})"
                problems.append(f"table {table} ({rows} rows) {gone}")
            continue
        if int(now[table]["rows"]) < rows or (int(now[table]["rows"]) != rows and table not in rewritten):
            problems.append(f"table {table}: {rows} rows before, {now[table]['rows']} after")
        elif table in rewritten or not rows:
            continue
        elif dropped := [column for column in columns if column not in now_columns[table]]:
            problems.append(f"table {table}: column(s) {', '.join(dropped)} dropped, with the values of {rows} rows")
        elif now[table]["checksum"] != before[table]["checksum"]:
            problems.append(f"table {table}: values changed in its old columns ({rows} rows)")
    return problems


def compare_migrated(db: Database, before: TableStats, facts: dict,
                     rewritten: tuple[str, ...] = ()) -> tuple[TableStats, Columns, list[str]]:
    """The database now (statistics over the shared columns, and its columns) and what it lost of
    the data `before` (a backup's statistics, with its `facts`) describes."""
    before_columns, now_columns = facts["columns"], db.table_columns()
    now = db.table_stats_since(shared_columns(before_columns, now_columns), before, facts)
    return now, now_columns, migration_losses(before, before_columns, now, now_columns, rewritten)


def listed(problems: list[str]) -> str:
    more = f"; and {len(problems) - NAMED} more" if len(problems) > NAMED else ""
    return "; ".join(problems[:NAMED]) + more
