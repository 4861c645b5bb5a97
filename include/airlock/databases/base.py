"""One interface for every database kind: consistent dump, restore, and table statistics."""

from __future__ import annotations

import hashlib
import logging
import subprocess
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger("airlock.backup")


class DatabaseError(RuntimeError):
    """A dump, restore or query failed; the message says which database and why (never a password)."""


TableStats = dict[str, dict[str, int | str]]
"""{table: {"rows": n, "checksum": "..."}}; the checksum does not depend on row order."""


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
    def table_stats(self) -> TableStats: ...

    @abstractmethod
    def scratch(self, label: str) -> Database:
        """A throw-away database of the same kind to restore into for verification."""

    @abstractmethod
    def drop(self) -> None: ...

    def secrets(self) -> list[str]:
        """Strings that must never reach a log line."""
        return []

    def redact(self, text: str) -> str:
        for secret in self.secrets():
            if secret:
                text = text.replace(secret, "***")
        return text


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
    """zstd every file of a dump directory (multi-threaded, fast level), replacing the originals."""
    run_checked(["zstd", "-q", "-1", "-T0", "--rm", *sorted(map(str, directory.iterdir()))], "zstd")
    return sorted(p.name for p in directory.iterdir())


def decompress_into(directory: Path, target: str) -> None:
    """The plain files of a compress_in_place() directory, written into `target`."""
    run_checked(["zstd", "-q", "-d", "-T0", "--output-dir-flat", target, *sorted(map(str, directory.iterdir()))],
                "zstd")


def run_checked(argv: list[str], what: str) -> None:
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise DatabaseError(f"{what} failed (exit {result.returncode}): {result.stderr.strip()[-500:]}")


@contextmanager
def progress_log(directory: Path, tables: int, what: str, every: float = 5.0) -> Iterator[None]:
    """Log how far a dump is (bytes written, rate, tables done) every few seconds."""
    done = threading.Event()
    started = time.monotonic()

    def report() -> None:
        while not done.wait(every):
            files = [p for p in directory.rglob("*") if p.is_file()]
            size = sum(p.stat().st_size for p in files)
            started_tables = sum(p.name.endswith("-schema.sql") for p in files)
            seconds = time.monotonic() - started
            tables_text = f", {started_tables} of {tables} tables started" if started_tables else ""
            log.info("dumping %s: %.1f MB written, %.1f MB/s%s", what, size / 1e6, size / 1e6 / seconds,
                     tables_text)

    thread = threading.Thread(target=report, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
