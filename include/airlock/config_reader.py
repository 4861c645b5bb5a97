"""Reading a targets file: one mapping at a time, every error naming file, target and field.

`${VAR}` is expanded only where a field asks for it (paths, URLs, connection names), and a value
that came from the environment is never echoed in an error. Numbers are finite and bounded; names
match their pattern in full.
"""

from __future__ import annotations

import math
import os
import re
from typing import Any
from urllib.parse import urlparse

ENV_NAME = re.compile(r"^[A-Z_][A-Z0-9_]*$")
SECRET_LOOKING = re.compile(r"PASSWORD|SECRET|TOKEN|API_KEY|STORE_URL|DATABASE_URL|URI$")
URL_CHARS = re.compile(r"[!-~]+")
"""Printable ASCII without spaces: a URL with a newline or a space in it is a broken paste."""
ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
MAX_TEXT = 4096
CONN_ID = re.compile(r"^[A-Za-z0-9_.-]{1,250}$")
MINUTES_MAX = 30 * 24 * 60
"""No wait in a targets file is longer than 30 days; a longer one is a typo (seconds for minutes)."""
SECONDS_MAX = 7 * 24 * 3600


class ConfigError(ValueError):
    """A targets file that cannot be used; the message says file, target and field."""


def expand_env(text: str) -> str:
    """Expand ${VAR} and ${VAR:-default} so one file serves several machines."""

    def replace(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        value = os.environ.get(name)
        if value is None or (value == "" and default is not None):
            if default is None:
                raise KeyError(name)
            return default
        return value

    return ENV_REF.sub(replace, text)


def shown(raw: str, value: str) -> str:
    """How a value appears in an error: as written in the file, never as the environment filled it in."""
    return repr(value) if raw == value else f"{raw!r} (as written; its expansion is not shown)"


class Reader:
    """Reads one mapping of the YAML file, remembering where it is for error messages."""

    def __init__(self, data: Any, where: str, source: str, target: str | None):
        self.source, self.target, self.where = source, target, where
        if not isinstance(data, dict):
            self.fail("", f"must be a mapping (got {type(data).__name__})")
        self.data: dict[str, Any] = data
        self.used: set[str] = set()

    def fail(self, key: str, message: str) -> None:
        place = ".".join(p for p in (self.where, key) if p)
        who = f"target {self.target!r}: " if self.target else ""
        raise ConfigError(f"{self.source}: {who}{place or 'top level'}: {message}")

    def child(self, key: str, *, required: bool = True) -> Reader:
        value = self._get(key, required, {})
        where = ".".join(p for p in (self.where, key) if p)
        return Reader(value, where, self.source, self.target)

    def _get(self, key: str, required: bool, default: Any) -> Any:
        self.used.add(key)
        if key not in self.data or self.data[key] is None:
            if required:
                self.fail(key, "is required")
            return default
        return self.data[key]

    def text(self, key: str, *, default: str | None = None, pattern: re.Pattern | None = None,
             expand: bool = False) -> str:
        """A string; `${VAR}` is expanded only where `expand` says the field is meant for it (paths,
        URLs, connection names), and a value that came from the environment is never echoed."""
        raw = self._get(key, default is None, default)
        if not isinstance(raw, str) or not raw.strip():
            self.fail(key, f"must be a non-empty string (got {raw!r})")
        value = self.expanded(key, raw) if expand else raw
        if len(value) > MAX_TEXT:
            self.fail(key, f"is {len(value)} characters long (at most {MAX_TEXT})")
        if pattern and not pattern.fullmatch(value):
            self.fail(key, f"{shown(raw, value)} does not match {pattern.pattern}")
        return value

    def expanded(self, key: str, raw: str) -> str:
        try:
            return expand_env(raw)
        except KeyError as missing:
            self.fail(key, f"uses environment variable {missing.args[0]} which is not set")
        raise AssertionError("unreachable")

    def path(self, key: str, *, default: str | None = None) -> str:
        """An absolute path on the worker (`${VAR}` expanded)."""
        raw = self._get(key, default is None, default)
        value = self.text(key, default=default, expand=True)
        if not os.path.isabs(value):
            self.fail(key, f"must be an absolute path (got {shown(raw, value)})")
        return value

    def url(self, key: str) -> str:
        """An http(s) URL with a host and a valid port, and no credentials in it."""
        raw = self.data.get(key)
        value = self.text(key, expand=True).rstrip("/")
        parsed = urlparse(value)
        if "@" in parsed.netloc:
            self.fail(key, "must not contain credentials (not shown); keep secrets in Airflow connections")
        if parsed.scheme not in ("http", "https") or not parsed.hostname or not URL_CHARS.fullmatch(value):
            self.fail(key, f"must be an http(s) URL with a host (got {shown(raw, value)})")
        try:
            port = parsed.port
        except ValueError:
            port = 0
        if port == 0 or (port is None and parsed.netloc.endswith(":")):
            self.fail(key, f"has no valid port (1-65535) (got {shown(raw, value)})")
        return value

    def urls(self, key: str) -> dict[str, str]:
        """A mapping of names to URLs."""
        child = self.child(key, required=False)
        return {name: child.url(name) for name in child.data}

    def optional_text(self, key: str, *, expand: bool = False) -> str | None:
        if self.data.get(key) is None:
            self.used.add(key)
            return None
        return self.text(key, expand=expand)

    def choice(self, key: str, choices: tuple[str, ...] | list[str], default: str | None = None) -> str:
        value = self._get(key, default is None, default)
        if value not in choices:
            self.fail(key, f"must be one of {', '.join(choices)} (got {value!r})")
        return value

    def number(self, key: str, default: float, *, minimum: float = 0, maximum: float,
               integer: bool = False) -> float:
        """A finite number within [minimum, maximum]: NaN, infinity and absurd values are typos."""
        value = self._get(key, False, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.fail(key, f"must be a number (got {value!r})")
        if not math.isfinite(value):
            self.fail(key, f"must be a finite number (got {value!r})")
        if integer and not float(value).is_integer():
            self.fail(key, f"must be a whole number (got {value!r})")
        if not minimum <= value <= maximum:
            self.fail(key, f"must be between {minimum:g} and {maximum:g} (got {value!r})")
        return int(value) if integer else float(value)

    def flag(self, key: str, default: bool) -> bool:
        value = self._get(key, False, default)
        if not isinstance(value, bool):
            self.fail(key, f"must be true or false (got {value!r})")
        return value

    def names(self, key: str) -> list[str]:
        value = self._get(key, False, [])
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            self.fail(key, f"must be a list of names (got {value!r})")
        return list(value)

    def paths(self, key: str) -> list[str]:
        """A list of absolute paths (environment references expanded)."""
        paths = []
        for index, raw in enumerate(self.names(key)):
            value = self.expanded(f"{key}[{index}]", raw)
            if not os.path.isabs(value):
                self.fail(f"{key}[{index}]", f"must be an absolute path on the worker (got {shown(raw, value)})")
            paths.append(value)
        return paths

    def environment_variables(self, key: str) -> tuple[dict[str, str], frozenset[str]]:
        """Plain (non-secret) environment variables for a server process, and the names of those
        marked `{value: …, safe: true}`: only their values are shown in configuration backups."""
        value = self._get(key, False, {})
        if not isinstance(value, dict):
            self.fail(key, f"must be a mapping of NAME: value (got {type(value).__name__})")
        variables, safe = {}, set()
        for name, entry in value.items():
            if not isinstance(name, str) or not ENV_NAME.fullmatch(name):
                self.fail(f"{key}.{str(name)[:64]}", "is not an environment variable name (A-Z, 0-9, _)")
            if SECRET_LOOKING.search(name):
                self.fail(f"{key}.{name}", "looks like a secret; keep secrets in Airflow connections")
            if isinstance(entry, dict):
                entry_reader = Reader(entry, f"{self.where}.{key}.{name}".lstrip("."), self.source, self.target)
                if entry_reader.flag("safe", False):
                    safe.add(name)
                entry = entry_reader._get("value", True, None)
                entry_reader.done()
            if isinstance(entry, bool) or not isinstance(entry, str | int | float) or len(str(entry)) > MAX_TEXT:
                self.fail(f"{key}.{name}", f"must be a string of at most {MAX_TEXT} characters "
                                           f"(got {type(entry).__name__})")
            variables[name] = str(entry)
        return variables, frozenset(safe)

    def secret_variables(self, key: str, conn_id: re.Pattern) -> dict[str, str]:
        """Secret environment variables for a server process, each `NAME: {conn_id: …}`: the value is
        that Airflow connection's password, read when the server starts."""
        value = self._get(key, False, {})
        if not isinstance(value, dict):
            self.fail(key, f"must be a mapping of NAME: {{conn_id: …}} (got {type(value).__name__})")
        variables = {}
        for name, entry in value.items():
            if not isinstance(name, str) or not ENV_NAME.fullmatch(name):
                self.fail(f"{key}.{str(name)[:64]}", "is not an environment variable name (A-Z, 0-9, _)")
            entry_reader = Reader(entry, f"{self.where}.{key}.{name}".lstrip("."), self.source, self.target)
            variables[name] = entry_reader.text("conn_id", pattern=conn_id, expand=True)
            entry_reader.done()
        return variables

    def done(self) -> None:
        unknown = sorted(set(self.data) - self.used)
        if unknown:
            self.fail(unknown[0], f"unknown setting (known here: {', '.join(sorted(self.used))})")
