"""A small JSON-over-HTTP client for platform servers (stdlib only, so adapters stay light)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import urlencode


class ServerError(RuntimeError):
    """A platform server did not answer, or answered with an error; the message names the URL.
    `status` is the HTTP status when there was an answer (401/403: the login was refused)."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


def request_json(method: str, url: str, body: dict | None = None, *, timeout: float = 30,
                 headers: dict[str, str] | None = None, form: dict[str, str] | None = None) -> Any:
    """Send one request (a JSON body, or a form) and decode the JSON answer."""
    if form is not None:
        data, content_type = urlencode(form).encode(), "application/x-www-form-urlencoded"
    else:
        data, content_type = (json.dumps(body).encode() if body is not None else None), "application/json"
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": content_type, **(headers or {})})
    return json.loads(payload) if (payload := _send(req, timeout)).strip() else {}


def request_text(url: str, *, timeout: float = 10, headers: dict[str, str] | None = None) -> str:
    """GET a plain-text endpoint such as /health or /version."""
    return _send(urllib.request.Request(url, headers=headers or {}), timeout).decode().strip()


def _send(req: urllib.request.Request, timeout: float) -> bytes:
    try:
        with urllib.request.urlopen(req, timeout=timeout) as response:
            return response.read()
    except urllib.error.HTTPError as error:
        detail = error.read().decode(errors="replace")[:500]
        raise ServerError(f"{req.get_method()} {req.full_url} answered HTTP {error.code}: {detail}",
                          error.code) from None
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise ServerError(f"{req.get_method()} {req.full_url} did not answer: {reason}") from None


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
