"""One interface for every database kind: consistent dump, restore, and table statistics."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import re
import shutil
import subprocess
import tempfile
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from airlock.child_env import child_env
from airlock.progress import ticking

log = logging.getLogger("airlock.backup")


class DatabaseError(RuntimeError):
    """A dump, restore or query failed; the message says which database and why (never a password)."""


StreamSink = Callable[[str, BinaryIO], None]
StreamSource = Callable[[str], BinaryIO]
TableStats = dict[str, dict[str, int | str]]
"""{table: {"rows": n, "checksum": "..."}}; the checksum does not depend on row order."""
Columns = dict[str, list[str]]
"""{table: [column, ...]} in the columns' order; recorded with each backup as facts["columns"]."""


@dataclass(frozen=True)
class ServerParams:
    """How to reach a database on a server (the password comes from an Airflow connection)."""

    host: str
    port: int
    user: str
    password: str
    database: str


class Database(ABC):
    kind: str

    @abstractmethod
    def describe(self) -> str:
        """Where the database is, without secrets, for logs and reports."""

    @abstractmethod
    def sqlalchemy_uri(self) -> str:
        """The URI the platform server connects with; contains the password, pass it only in env."""

    @abstractmethod
    def exists(self) -> bool: ...

    @abstractmethod
    def dump(self, directory: Path) -> tuple[list[str], TableStats, dict]:
        """Write a consistent snapshot into `directory`; return its files, the statistics of
        exactly that snapshot, and facts a restore needs (server version, schema version...)."""

    @abstractmethod
    def load(self, directory: Path, facts: dict) -> None:
        """Drop the database, recreate it and load the snapshot in `directory` into it."""

    @abstractmethod
    def dump_stream(self, put: StreamSink) -> tuple[list[str], TableStats, dict]:
        """Like dump(), but each file is a stream handed to `put(name, stream)` (for object stores:
        nothing of the dump is kept on local disk)."""

    @abstractmethod
    def load_stream(self, get: StreamSource, facts: dict) -> None:
        """Like load(), reading each file of a dump_stream() backup from `get(name)`."""

    @abstractmethod
    def table_stats(self, columns: Columns | None = None) -> TableStats:
        """Row count and an order-independent checksum per table. With `columns`, only those tables,
        over only those columns in that order (over all of a table's columns in their order, the same
        checksum as without): how a migrated database is compared with the backup taken before."""

    @abstractmethod
    def table_columns(self) -> Columns:
        """Every table's columns, in their order."""

    @abstractmethod
    def consistent_stats(self) -> tuple[TableStats, Columns]:
        """table_stats() and table_columns() read at one consistent point (one snapshot), as a dump's
        statistics are."""

    def tables_changed_since(self, tables: TableStats, facts: dict) -> list[str]:
        """The tables whose rows, checksum or columns differ from a backup with these statistics and
        facts (added and dropped ones too), read at one consistent point: none when the database
        holds exactly that backup's data. A kind may name only the tables whose columns differ when
        there are any (enough to refuse), so the list is "at least these"."""
        stats, columns = self.consistent_stats()
        return sorted(differing(stats, tables) | differing(columns, facts.get("columns") or {}))

    def table_stats_since(self, columns: Columns, before: TableStats, facts: dict) -> TableStats:
        """table_stats(columns) after a migration, against a backup with statistics `before` and `facts`
        (a database with a cheaper proof that a table is unchanged takes `before`'s for it)."""
        return self.table_stats(columns)

    @abstractmethod
    def scratch(self, label: str) -> Database:
        """A throw-away database of the same kind to restore into for verification (on the scratch
        server, when one is set); scratch copies of the same label and source that a dead worker left
        are dropped first."""

    def scratch_prefix(self, label: str) -> str:
        """airlock_verify_<label>_<6 hex of where this database is>_: what a later run looks for."""
        source = hashlib.sha256(self.describe().encode()).hexdigest()[:6]
        return f"airlock_verify_{re.sub(r'[^a-z0-9]', '', label.lower())[:16]}_{source}_"

    @abstractmethod
    def drop(self) -> None: ...

    # -- restoring over the live database ------------------------------------------------------
    def required_tools(self, facts: dict) -> list[str]:
        """The programs a restore of a backup with these facts runs."""
        return ["zstd"]

    def data_directory(self) -> Path | None:
        """Where the server keeps its files, when that is this machine's disk (for a space check)."""
        return None

    def loads_from_files_only(self, facts: dict) -> bool:
        """Whether a dump of these facts loads only from files (never streamed from an object store)."""
        return False

    def restores_through_files(self, facts: dict) -> bool:
        """Whether a restore decompresses the set into temporary files first (directory formats)."""
        return True

    def check_restore_possible(self, facts: dict, plain_bytes: int) -> None:
        """Everything a restore needs, checked before anything is dropped: its tools, and room for
        the restored copy beside the live data (the swap keeps both until the copy is proven)."""
        missing = [tool for tool in self.required_tools(facts) if shutil.which(tool) is None]
        if missing:
            raise DatabaseError(f"cannot restore {self.describe()}: {', '.join(missing)} not installed on this "
                                "worker; nothing was changed. Install it and clear this task.")
        needs = {Path(tempfile.gettempdir()): plain_bytes} if self.restores_through_files(facts) else {}
        data_dir = self.data_directory()
        if data_dir is not None:
            on_server = max(int(plain_bytes * 1.2), int(facts.get("disk_bytes") or 0))
            needs[data_dir] = needs.get(data_dir, 0) + on_server
        for where, size in needs.items():
            free = shutil.disk_usage(where).free
            if free < size:
                raise DatabaseError(f"cannot restore {self.describe()}: {where} has {free / 1e6:.1f} MB free and the "
                                    f"restore needs about {size / 1e6:.1f} MB; nothing was changed. Free space "
                                    "(or point TMPDIR elsewhere) and clear this task.")

    def restore_in_place(self, load: Callable[[Database], None], check: Callable[[Database], list[str]],
                         facts: dict) -> None:
        """Load the backup into a new database beside this one, prove it, then swap names: a restore
        cut half-way leaves the old data where it was, and a re-run starts again from the top."""
        staging = self.restore_staging()
        staging.drop()  # what a cut earlier try left
        try:
            load(staging)
            problems = check(staging)
            if problems:
                raise DatabaseError(f"the restored copy of {self.describe()} does not match its manifest "
                                    f"(nothing was changed): " + "; ".join(problems))
            self.swap_in(staging, facts)
        finally:
            staging.drop()

    @abstractmethod
    def restore_staging(self) -> Database:
        """The database a restore loads into before the swap (named after this one, so a re-run
        finds what a cut restore left)."""

    @abstractmethod
    def swap_in(self, staging: Database, facts: dict) -> None:
        """Give `staging`'s contents this database's name; the old contents are dropped."""

    def secrets(self) -> list[str]:
        """Strings that must never reach a log line."""
        return []

    def redact(self, text: str) -> str:
        for secret in self.secrets():
            if secret:
                text = text.replace(secret, "***")
        return text


def differing(now: dict, then: dict) -> set[str]:
    """The keys whose value differs between two per-table mappings, or that only one of them has."""
    return {key for key in now.keys() | then.keys() if now.get(key) != then.get(key)}


def row_checksum_sum(rows) -> tuple[int, str]:
    """Count rows and sum a 60-bit hash of each: equal for equal multisets of rows, in any order."""
    count, total = 0, 0
    for row in rows:
        count += 1
        total += int(hashlib.sha256(repr(tuple(row)).encode()).hexdigest()[:15], 16)
    return count, format(total, "x")


def compress(source: Path, target: Path) -> None:
    """zstd-compress a file (multi-threaded), removing the source."""
    run_checked(["zstd", "-q", "-3", "-T0", "--rm", "-f", str(source), "-o", str(target)], "zstd")


def decompress(source: Path, target: Path) -> None:
    run_checked(["zstd", "-q", "-d", "-f", str(source), "-o", str(target)], "zstd")


def compress_in_place(directory: Path) -> list[str]:
    """zstd every file of a dump directory not compressed yet (multi-threaded, fast level)."""
    plain = sorted(str(p) for p in directory.iterdir() if p.suffix != ".zst")
    if plain:
        run_checked(["zstd", "-q", "-1", "-T0", "--rm", *plain], "zstd")
    return sorted(p.name for p in directory.iterdir())


def decompress_into(directory: Path, target: str) -> None:
    """The plain files of a compress_in_place() directory, written into `target`."""
    run_checked(["zstd", "-q", "-d", "-T0", "--output-dir-flat", target, *sorted(map(str, directory.iterdir()))],
                "zstd")


def feed(source: BinaryIO, sink: BinaryIO) -> threading.Thread:
    """Copy a stream into a process's stdin on a thread (closing it at the end)."""

    def copy() -> None:
        # A broken pipe means the reading process failed; its exit code and stderr say why.
        with contextlib.suppress(BrokenPipeError):
            try:
                shutil.copyfileobj(source, sink, 1 << 20)
            finally:
                with contextlib.suppress(BrokenPipeError):
                    sink.close()

    thread = threading.Thread(target=copy, daemon=True)
    thread.start()
    return thread


class LineWatcher:
    """Reads a tool's output line by line on a thread, keeping it for error messages and handing
    each line to `on_line` (to learn, for example, when the tool has opened its snapshot)."""

    def __init__(self, stream: BinaryIO, on_line: Callable[[str], None] | None = None):
        self.lines: list[str] = []
        self.thread = threading.Thread(target=self.read, args=(stream, on_line or (lambda line: None)), daemon=True)
        self.thread.start()

    def read(self, stream: BinaryIO, on_line: Callable[[str], None]) -> None:
        for raw in iter(stream.readline, b""):
            line = raw.decode(errors="replace").rstrip("\n")
            self.lines.append(line)
            on_line(line)

    def text(self) -> bytes:
        self.thread.join()
        return "\n".join(self.lines).encode()


@contextmanager
def compressed_output(argv: list[str], what: str, env: dict | None = None, redact: Callable[[str], str] = str,
                      on_stderr_line: Callable[[str], None] | None = None) -> Iterator[BinaryIO]:
    """argv | zstd, as a stream to read; both exit codes checked when the reader is done."""
    tool = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env or child_env())
    tool_stderr = LineWatcher(tool.stderr, on_stderr_line)
    zstd = subprocess.Popen(["zstd", "-q", "-3", "-T0", "-c"], stdin=tool.stdout, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=child_env())
    tool.stdout.close()
    try:
        yield zstd.stdout
    except BaseException:
        tool.kill()
        zstd.kill()
        raise
    finally:
        zstd.stdout.close()
        zstd_err = zstd.communicate()[1]
        tool.wait()
        tool_err = tool_stderr.text()
    for name, process, err in ((what, tool, tool_err), ("zstd", zstd, zstd_err)):
        if process.returncode != 0:
            raise DatabaseError(f"{name} failed (exit {process.returncode}): "
                                f"{redact(err.decode(errors='replace').strip()[-800:])}")


def decompress_stream_into(source: BinaryIO, argv: list[str], what: str, env: dict | None = None,
                           redact: Callable[[str], str] = str) -> None:
    """zstd -d < source | argv (a loader reading SQL or a dump from stdin), failing with either's error."""
    unzip = subprocess.Popen(["zstd", "-q", "-d", "-c"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, env=child_env())
    loader = subprocess.Popen(argv, stdin=unzip.stdout, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              env=env or child_env())
    unzip.stdout.close()
    copier = feed(source, unzip.stdin)
    loader_err = loader.communicate()[1]
    copier.join()
    unzip_err = unzip.stderr.read()  # not communicate(): the copier owns (and closed) its stdin
    unzip.wait()
    for name, process, err in (("zstd", unzip, unzip_err), (what, loader, loader_err)):
        if process.returncode != 0:
            raise DatabaseError(f"{name} failed (exit {process.returncode}): "
                                f"{redact(err.decode(errors='replace').strip()[-800:])}")


def run_checked(argv: list[str], what: str) -> None:
    result = subprocess.run(argv, capture_output=True, text=True, check=False, env=child_env())
    if result.returncode != 0:
        raise DatabaseError(f"{what} failed (exit {result.returncode}): {result.stderr.strip()[-500:]}")


def progress_log(directory: Path, tables: int, what: str):
    """Progress lines of a dump: bytes written into `directory`, the rate, tables started."""
    def written() -> float:
        return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())

    def started() -> str:
        count = sum(1 for _ in directory.rglob("*-schema.sql"))
        return f"{count} of {tables} tables started" if count else ""

    return ticking(f"dumping {what}", measure=written, detail=started, logger=log)
