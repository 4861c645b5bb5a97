"""The environment of every process Airlock starts: what that process needs, nothing more.

A worker's environment holds Airflow's own settings and secrets (AIRFLOW_CONN_*, AIRFLOW_VAR_*, the
Fernet key) and often cloud credentials (AWS_*). A platform server, a migration, an artifact check
that unpickles models, a package build during `pip install`: none of them may inherit those.
"""

from __future__ import annotations

import os

BASE = ("PATH", "HOME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "USER", "LOGNAME", "LD_LIBRARY_PATH",
        "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")
"""Locale, time zone, where to find programs, libraries, a home and CA certificates."""
NETWORK = ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy")
"""For processes that reach the package index."""


def child_env(extra: dict[str, str] | None = None, *, network: bool = False, prefixes: tuple[str, ...] = ()) -> dict:
    """The worker's locale/paths (and proxies with `network`), variables starting with `prefixes`
    (e.g. PIP_ for an install), then `extra` — the process's own settings and secrets."""
    names = BASE + (NETWORK if network else ())
    env = {name: value for name, value in os.environ.items()
           if name in names or name.startswith(("LC_", *prefixes))}
    return {**env, **(extra or {})}
