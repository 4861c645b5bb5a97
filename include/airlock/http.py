"""A small JSON-over-HTTP client for platform servers (stdlib only, so adapters stay light)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any


class ServerError(RuntimeError):
    """A platform server did not answer, or answered with an error; the message names the URL."""


def request_json(method: str, url: str, body: dict | None = None, *, timeout: float = 30,
                 headers: dict[str, str] | None = None) -> Any:
    """Send one request and decode the JSON answer."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as response:
            payload = response.read()
    except urllib.error.HTTPError as error:
        detail = error.read().decode(errors="replace")[:500]
        raise ServerError(f"{method} {url} answered HTTP {error.code}: {detail}") from None
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise ServerError(f"{method} {url} did not answer: {reason}") from None
    return json.loads(payload) if payload.strip() else {}


def request_text(url: str, *, timeout: float = 10) -> str:
    """GET a plain-text endpoint such as /health or /version."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.read().decode().strip()
    except urllib.error.HTTPError as error:
        raise ServerError(f"GET {url} answered HTTP {error.code}") from None
    except (urllib.error.URLError, OSError) as error:
        raise ServerError(f"GET {url} did not answer: {getattr(error, 'reason', error)}") from None


def answers(url: str, *, timeout: float = 5) -> bool:
    """Whether anything answers HTTP at `url`, whatever the status (a 503 answers; a refused or
    timed-out connection does not)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout):
            return True
    except urllib.error.HTTPError:
        return True
    except (urllib.error.URLError, OSError):
        return False
