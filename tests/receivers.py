"""Where notifications land in the tests: a real SMTP server (aiosmtpd) and an HTTP receiver that
keeps what is POSTed to it, as a Slack-compatible webhook would; with the Airflow connections that
reach them (the webhook's secret is in its URL, as Slack's is)."""

from __future__ import annotations

import email
import email.policy
import http.server
import json
import threading
import time
from dataclasses import dataclass, field

from services import free_port

WEBHOOK_TOKEN = "T0KEN-b5d4e1c2"


@dataclass
class Inbox:
    """A local SMTP server; `messages`: (subject, plain text of the body, recipients)."""

    port: int = field(default_factory=free_port)
    messages: list[tuple[str, str, list[str]]] = field(default_factory=list)

    def start(self) -> Inbox:
        from aiosmtpd.controller import Controller

        inbox = self

        class Keep:
            async def handle_DATA(self, server, session, envelope):
                message = email.message_from_bytes(envelope.content, policy=email.policy.default)
                body = message.get_body(preferencelist=("html", "plain"))
                inbox.messages.append((str(message["subject"]), body.get_content() if body else "",
                                       list(envelope.rcpt_tos)))
                return "250 OK"

        self.controller = Controller(Keep(), hostname="127.0.0.1", port=self.port)
        self.controller.start()
        return self

    def stop(self) -> None:
        self.controller.stop()

    def connection(self) -> str:
        return json.dumps({"conn_type": "smtp", "host": "127.0.0.1", "port": self.port,
                           "extra": {"disable_ssl": True, "disable_tls": True, "timeout": 10, "retry_limit": 1}})


@dataclass
class Webhook:
    """An HTTP receiver: `posts` holds each JSON body POSTed to /hooks/<token>."""

    port: int = field(default_factory=free_port)
    posts: list[dict] = field(default_factory=list)

    def start(self) -> Webhook:
        hook = self

        class Receive(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.path == f"/hooks/{WEBHOOK_TOKEN}":
                    hook.posts.append(json.loads(body))
                    self.send_response(200)
                else:
                    self.send_response(404)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Receive)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self.server.shutdown()

    def connection(self) -> str:
        return json.dumps({"conn_type": "http", "host": f"http://127.0.0.1:{self.port}/hooks/{WEBHOOK_TOKEN}"})


def wait_for(found, timeout: float = 10):
    """What `found()` returns once it is truthy (an SMTP delivery takes a moment)."""
    deadline = time.monotonic() + timeout
    while not (result := found()) and time.monotonic() < deadline:
        time.sleep(0.1)
    return result
