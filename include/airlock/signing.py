"""Manifests signed with a key that lives in Airflow, not in the backup store.

Whoever can write to the store (a bucket policy too wide, a shared NFS export) could otherwise put a
forged set there, with a manifest that matches its own dump, and have it restored over production.
An HMAC over the manifest, with a key from an Airflow connection or variable, makes such a set
refused at restore.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable

SIGNATURE = "hmac_sha256"
MIN_KEY_LENGTH = 16


class SigningError(RuntimeError):
    """No usable signing key, or a manifest whose signature does not match."""


def manifest_signature(key: bytes, manifest: dict) -> str:
    body = {name: value for name, value in manifest.items() if name != SIGNATURE}
    return hmac.new(key, json.dumps(body, sort_keys=True).encode(), hashlib.sha256).hexdigest()


class Signer:
    """Signs and checks manifests; the key is fetched once, on first use (never at parse time)."""

    def __init__(self, fetch_key: Callable[[], str], where: str):
        self.fetch_key, self.where, self._key = fetch_key, where, b""

    def key(self) -> bytes:
        if not self._key:
            try:
                text = self.fetch_key() or ""
            except Exception as error:
                raise SigningError(f"cannot read the backup signing key from {self.where}: "
                                   f"{type(error).__name__}") from None
            if len(text) < MIN_KEY_LENGTH:
                raise SigningError(
                    f"the backup signing key ({self.where}) is missing or shorter than {MIN_KEY_LENGTH} "
                    "characters. Set it once, e.g. `airflow variables set airlock_backup_signing_key "
                    "$(openssl rand -hex 32)`, or point backup.signing_key at another variable or connection. "
                    "Nothing was touched.")
            self._key = text.encode()
        return self._key

    def sign(self, manifest: dict) -> dict:
        return {**manifest, SIGNATURE: manifest_signature(self.key(), manifest)}

    def check(self, manifest: dict, what: str) -> None:
        """Refuse a manifest not signed with this key (forged, altered, or written with another key)."""
        found = manifest.get(SIGNATURE)
        if not isinstance(found, str) or not hmac.compare_digest(found, manifest_signature(self.key(), manifest)):
            raise SigningError(
                f"{what}: its manifest is {'not signed' if not found else 'not signed with this target’s key'} "
                f"({self.where}): it was not written by this Airlock, or was altered since. Refusing to use it. "
                "If the store holds sets from before signing was configured, take a fresh backup.")
