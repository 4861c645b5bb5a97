"""Secrets kept out of what Airlock stores and prints: configuration backups, job logs, reports.

Pure logic. A value is dropped when its name says it is a secret (`DB_PASSWORD`, `auth.token`,
`{name: API_KEY, value: …}`), and the password part of any URL (`mysql://user:pw@host`) or a
`password=` query or argument is masked wherever it appears, since connection strings travel in
values whose names say nothing (`backendStore`, `args`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import quote, quote_plus

MARK = "<redacted>"
SECRET_NAME = re.compile(r"pass|pwd|secret|token|auth|key|credential|cookie|private|dsn|uri$", re.IGNORECASE)
"""Names whose values are secrets or may carry one (connection URIs and DSNs; a URL keeps all but
its password)."""
NOT_SECRET_NAME = re.compile(r"^(keys?|key_?path|.*_key_?id|public_?key|.*auth_?scheme|.*auth_?type)$", re.IGNORECASE)
"""Names that match SECRET_NAME but hold none: a KMS key id, an auth scheme, a list of key names."""
URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^\s/:@]*:)(?P<secret>[^\s@/]*)(?P<tail>@)")
ASSIGNED_SECRET = re.compile(
    r"(?P<head>\b[\w.-]*(?:pass|pwd|secret|token|api[_-]?key|credential|auth)[\w.-]*\s*[=:]\s*[\"']?)"
    r"(?P<secret>[^\s\"'&,;]+)", re.IGNORECASE)
"""`password=x`, `--token x` is not caught (two words) but `--token=x` and `DB_PASSWORD: x` are."""


def secret_name(name: object) -> bool:
    text = str(name)
    return bool(SECRET_NAME.search(text)) and not NOT_SECRET_NAME.match(text)


def redact_text(text: str, secrets: Iterable[str] = ()) -> str:
    """`text` with known secret values (and their URL-quoted forms), URL passwords and
    `name=value` secrets masked."""
    for secret in sorted(variants(secrets), key=len, reverse=True):
        text = text.replace(secret, MARK)
    text = URL_PASSWORD.sub(lambda m: m["head"] + MARK + m["tail"], text)
    return ASSIGNED_SECRET.sub(lambda m: m["head"] + MARK, text)


def variants(secrets: Iterable[str]) -> set[str]:
    """A secret as it may appear: as is, URL-quoted (paths and userinfo), form-quoted."""
    found = set()
    for secret in secrets:
        if secret and len(secret) >= 4:  # shorter "secrets" would mask ordinary words
            found |= {secret, quote(secret), quote(secret, safe=""), quote_plus(secret)}
    return found


def redact_structure(value: object, secrets: Iterable[str] = ()) -> object:
    """A copy of Helm values, a manifest document or a deployment record with secrets masked:
    values under secret names, `{name: SECRET_NAME, value: …}` list entries (container env), and
    passwords inside any string."""
    secrets = list(secrets)
    if isinstance(value, dict):
        if secret_name(value.get("name", "")) and "value" in value and not isinstance(value["value"], dict | list):
            return {**{k: redact_structure(v, secrets) for k, v in value.items() if k != "value"}, "value": MARK}
        return {key: MARK if secret_name(key) and not isinstance(item, dict | list) and item not in (None, "")
                else redact_structure(item, secrets) for key, item in value.items()}
    if isinstance(value, list):
        return [redact_structure(item, secrets) for item in value]
    if isinstance(value, str):
        return redact_text(value, secrets)
    return value
