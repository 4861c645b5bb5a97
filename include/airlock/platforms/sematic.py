"""Sematic server: health (`/api/v1/ping`), version, pipeline runs, fingerprint, smoke test, migration.

Sematic's rule: the server is upgraded before its clients, and a client must never be newer than
the server; each server version also names the oldest client it supports. That window ships
with Airlock in `sematic_clients.json` (where the numbers come from is written in the file).
"""

from __future__ import annotations

import json
import time
import uuid
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlencode

from packaging.version import Version

from airlock.http import ServerError
from airlock.platforms.base import (
    Command,
    Fingerprint,
    PlatformAdapter,
    RunningRun,
    is_stale,
    iso_to_millis,
    millis_to_iso,
)

API = "/api/v1"
PAGE = 500
CLIENT_WINDOWS = Path(__file__).resolve().parent / "sematic_clients.json"
IN_PROGRESS = ("CREATED", "SCHEDULED", "RAN", "RETRYING")
"""future_state values of a pipeline (root run) that has not finished."""
SMOKE_NOTE_PREFIX = "airlock-smoke-"


def min_client_for(server: Version) -> tuple[Version, str]:
    """The oldest client a server version supports, from the shipped table; a server version
    the table does not list takes the entry of the newest listed version below it (Sematic
    only ever raises the minimum)."""
    table = json.loads(CLIENT_WINDOWS.read_text())["min_client_by_server"]
    known = sorted((Version(s), Version(c)) for s, c in table.items())
    below = [(s, c) for s, c in known if s <= server]
    if not below:
        return Version("0"), f"no entry at or below {server} in {CLIENT_WINDOWS.name}: only 'not newer' is checked"
    listed, minimum = below[-1]
    source = f"{CLIENT_WINDOWS.name}, entry {listed}" + ("" if listed == server else f" (nearest below {server})")
    return minimum, source


class SematicAdapter(PlatformAdapter):
    name = "sematic"
    package = "sematic"
    client_rule = "not newer than the server, and not older than the server's minimum client"

    # -- server -------------------------------------------------------------------------------
    def health(self) -> None:
        answer = self._get("/ping")
        if answer.get("status") != "ok":
            raise ServerError(f"GET {self.url}{API}/ping answered {answer!r}, expected status 'ok'")

    def server_version(self) -> str:
        return ".".join(str(part) for part in self._get("/meta/versions")["server"])

    def install_requirements(self, version: str) -> list[str]:
        return [f"sematic=={version}"]

    def server_command(self, bin_dir: str, host: str, port: int, db_uri: str, artifact_root: str) -> Command:
        # Sematic keeps its settings, pid file, logs and local artifact storage under $HOME/.sematic.
        return Command(
            argv=[f"{bin_dir}/python", "-c", "from sematic.api.server import run_locally; run_locally()"],
            env={"HOME": artifact_root, "PORT": str(port), "SEMATIC_SERVER_ADDRESS": host},
            secret_env={"DATABASE_URL": db_uri},
        )

    def migration_command(self, bin_dir: str, db_uri: str, artifact_root: str) -> Command:
        # Sematic's server does not migrate at start; its CLI does, with this function. Importing it
        # creates $HOME/.sematic: the environment's own, as the server's (two migrations at once on a
        # worker's fresh home race to create it, and one fails).
        return Command([f"{bin_dir}/python", "-c", "from sematic.db.migrate import migrate_up; migrate_up()"],
                       env={"HOME": artifact_root}, secret_env={"DATABASE_URL": db_uri})

    def client_problem(self, client: Version, server: Version) -> str | None:
        if client > server:
            return f"Sematic clients must never be newer than the server ({client} > {server}); upgrade it first"
        minimum, source = min_client_for(server)
        if client < minimum:
            return f"Sematic {server} supports clients from {minimum} on ({source}); {client} is older"
        return None

    def client_env(self, scratch_dir: str) -> dict[str, str]:
        return {"SEMATIC_API_ADDRESS": self.url, "HOME": scratch_dir}

    # -- logging in: a user's API key (servers started with SEMATIC_AUTHENTICATE) ---------------
    def auth_headers(self) -> dict[str, str]:
        return {"X-API-KEY": self.credential.secret} if self.credential else {}

    def credential_env(self) -> dict[str, str]:
        return {"SEMATIC_API_KEY": self.credential.secret} if self.credential else {}

    def access_probe(self) -> None:
        self._get("/runs?limit=1")

    # -- reading ------------------------------------------------------------------------------
    def _get(self, path: str) -> dict:
        return self.request("GET", f"{API}{path}")

    def listing(self, resource: str, filters: dict | None = None) -> list[dict]:
        """Every item of a list endpoint, following its cursors."""
        found, cursor = [], None
        while True:
            query = {"limit": PAGE, **({"filters": json.dumps(filters)} if filters else {}),
                     **({"cursor": cursor} if cursor else {})}
            answer = self._get(f"/{resource}?{urlencode(query)}")
            found.extend(answer.get("content", []))
            cursor = answer.get("next_cursor")
            if not cursor:
                return found

    # -- what the upgrade needs ---------------------------------------------------------------
    def running_runs(self, stale_after: timedelta) -> list[RunningRun]:
        found = []
        in_progress = {"AND": [{"parent_id": {"eq": None}}, {"future_state": {"in": list(IN_PROGRESS)}}]}
        for run in self.listing("runs", in_progress):
            last = iso_to_millis(run.get("updated_at"))
            found.append(RunningRun(
                run_id=run["id"], name=run.get("name") or "", where=f"{run.get('function_path')} "
                                                                    f"({run['future_state']})",
                started_at=millis_to_iso(iso_to_millis(run.get("started_at") or run.get("created_at"))),
                last_activity=millis_to_iso(last), stale=is_stale(last, stale_after)))
        return found

    def fingerprint(self) -> Fingerprint:
        """Hash runs, artifacts and notes (Airlock's own smoke notes left out)."""
        runs = [{key: run.get(key) for key in ("id", "name", "function_path", "future_state", "parent_id",
                                               "root_id", "tags", "started_at", "resolved_at", "failed_at")}
                for run in self.listing("runs")]
        artifacts = [{"id": a["id"], "type": a.get("type_serialization"), "summary": a.get("json_summary")}
                     for a in self.listing("artifacts")]
        notes = [{"id": n["id"], "note": n["note"], "root_id": n["root_id"]}
                 for n in self._get("/notes").get("content", []) if not n["note"].startswith(SMOKE_NOTE_PREFIX)]
        sections = {"runs": runs, "artifacts": artifacts, "notes": notes}
        return Fingerprint.of({name: sorted(items, key=lambda item: item["id"]) for name, items in sections.items()})

    def smoke_test(self) -> dict:
        """A REST round trip through the database: a note on the newest pipeline run, read back and
        deleted. A server without any run gets read-only checks (there is nothing to attach to)."""
        started = time.monotonic()
        roots = self._get("/runs?" + urlencode({"limit": 1, "filters": json.dumps({"parent_id": {"eq": None}})}))
        if not roots.get("content"):
            self.listing("artifacts")
            return {"note": None, "read_only": "no pipeline run to attach a note to",
                    "seconds": round(time.monotonic() - started, 3)}
        root_id = roots["content"][0]["id"]
        text = f"{SMOKE_NOTE_PREFIX}{uuid.uuid4().hex[:12]}"
        note = self.request("POST", f"{API}/notes",
                            {"note": {"note": text, "run_id": root_id, "root_id": root_id}})["content"]
        try:
            stored = [n for n in self._get("/notes").get("content", []) if n["id"] == note["id"]]
            if not stored or stored[0]["note"] != text:
                raise ServerError(f"smoke test on {self.url}: note {note['id']} did not read back as written")
        finally:
            self.request("DELETE", f"{API}/notes/{note['id']}")
        return {"note": text, "run": root_id, "created_and_deleted": True,
                "seconds": round(time.monotonic() - started, 3)}
