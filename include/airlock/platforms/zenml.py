"""ZenML server: health, version, pipeline runs, fingerprint, smoke test, migration.

Through ZenML's REST API (`/api/v1`), so one Airlock worker checks servers of any version.
ZenML's server migrates its database by itself when a new version starts, so Airlock runs that
same migration explicitly (the store's own `migrate_database`) after the verified backup, and
never starts a new version before the backup exists.
"""

from __future__ import annotations

import time
import uuid
from datetime import timedelta
from urllib.parse import urlencode

from packaging.version import Version

from airlock.http import ServerError, request_json
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
PAGE = 100
IN_PROGRESS = ("initializing", "provisioning", "running", "retrying", "stopping")
"""Run statuses that mean the pipeline is still going (ZenML's ExecutionStatus)."""
SERVER_OWNED = "default"
"""ZenML registers (and on upgrades extends) its `default` stack and components itself: 0.98's
migration adds a default deployer. They are the server's, not the teams', so the fingerprint
leaves them out; stacks and components the teams registered are compared exactly."""
SMOKE_TAG_PREFIX = "airlock-smoke-"

MIGRATE_SCRIPT = """
import os, tempfile
os.environ.setdefault("ZENML_CONFIG_PATH", tempfile.mkdtemp(prefix="airlock-zenml-"))
os.environ.setdefault("ZENML_ANALYTICS_OPT_IN", "false")
from zenml.zen_stores.sql_zen_store import SqlZenStore, SqlZenStoreConfiguration
store = SqlZenStore(config=SqlZenStoreConfiguration(url=os.environ["AIRLOCK_DB_URI"]),
                    skip_default_registrations=True)
print("database at ZenML", store.get_store_info().version)
"""
"""The migration the server would run at start, run on its own (it also applies to a rehearsal copy)."""


def zenml_store_url(db_uri: str) -> str:
    """ZenML names the MySQL driver itself: it wants mysql://, not SQLAlchemy's mysql+pymysql://."""
    return db_uri.replace("mysql+pymysql://", "mysql://", 1)


class ZenmlAdapter(PlatformAdapter):
    name = "zenml"
    package = "zenml"
    client_rule = "exactly the server's version"
    downgrade_note = "ZenML does not support downgrading a server; restore a backup taken before the upgrade instead"
    self_written_tables = ("server_settings", "api_key")
    """server_settings: last_user_activity, on every request; api_key: last_login, on every login."""
    migration_rewrites = ("api_transaction", "flavor", "stack_component", "stack_composition", "pipeline_run")
    """Seen on 0.90 → 0.98: the request cache loses its `result` column, the flavors are synced, a
    default deployer is added to the default stack, and `pipeline_run.trigger_execution_id` goes
    (the trigger executions' feature was removed). Their runs, stacks and components are still in the
    API fingerprint."""
    _token: str | None = None

    # -- server -------------------------------------------------------------------------------
    def health(self) -> None:
        answer = self.text("/health", public=True)
        if answer.strip('"').lower() != "ok":
            raise ServerError(f"GET {self.url}/health answered {answer!r}, expected 'OK'")

    def server_version(self) -> str:
        return self._get("/info")["version"]

    def install_requirements(self, version: str) -> list[str]:
        return [f"zenml[server]=={version}", "pymysql==1.1.3"]  # ZenML pins pymysql~=1.1

    def server_command(self, bin_dir: str, host: str, port: int, db_uri: str, artifact_root: str) -> Command:
        return Command(
            argv=[f"{bin_dir}/uvicorn", "zenml.zen_server.zen_server_api:app", "--host", host, "--port", str(port)],
            env={"ZENML_SERVER": "true", "ZENML_CONFIG_PATH": f"{artifact_root}/.zenml-config",
                 "ZENML_LOCAL_STORES_PATH": artifact_root, "ZENML_ANALYTICS_OPT_IN": "false",
                 "ZENML_SERVER_DEPLOYMENT_TYPE": "other", "ZENML_SERVER_AUTO_ACTIVATE": "1"},
            secret_env={"ZENML_STORE_URL": zenml_store_url(db_uri)},
        )

    def migration_command(self, bin_dir: str, db_uri: str, artifact_root: str) -> Command:
        return Command([f"{bin_dir}/python", "-c", MIGRATE_SCRIPT],
                       secret_env={"AIRLOCK_DB_URI": zenml_store_url(db_uri)})

    def client_problem(self, client: Version, server: Version) -> str | None:
        if client != server:
            return f"ZenML clients must run the server's exact version ({server}), not {client}"
        return None

    def client_env(self, scratch_dir: str) -> dict[str, str]:
        return {"ZENML_STORE_URL": self.url, "ZENML_CONFIG_PATH": scratch_dir,
                "ZENML_ANALYTICS_OPT_IN": "false", "ZENML_LOGGING_VERBOSITY": "WARN"}

    # -- logging in: a service account's API key (or a user's name and password), exchanged at
    # /login for a short-lived token, as ZenML's own client does ---------------------------------
    def auth_headers(self) -> dict[str, str]:
        if self.credential is None:
            return {}
        if self._token is None:
            form = ({"grant_type": "password", "username": self.credential.username,
                     "password": self.credential.secret} if self.credential.is_login
                    else {"grant_type": "zenml-api-key", "password": self.credential.secret})
            try:
                answer = request_json("POST", f"{self.url}{API}/login", form=form)
            except ServerError as error:
                raise self.refused(error) from None
            self._token = answer["access_token"]
        return {"Authorization": f"Bearer {self._token}"}

    def forget_session(self) -> bool:
        had, self._token = self._token is not None, None
        return had

    def credential_env(self) -> dict[str, str]:
        if self.credential is None:
            return {}
        if self.credential.is_login:
            return {"ZENML_STORE_USERNAME": self.credential.username, "ZENML_STORE_PASSWORD": self.credential.secret}
        return {"ZENML_STORE_API_KEY": self.credential.secret}

    def access_probe(self) -> None:
        self._get("/current-user")

    # -- reading ------------------------------------------------------------------------------
    def _get(self, path: str) -> dict:
        return self.request("GET", f"{API}{path}")

    def items(self, resource: str, **filters: str) -> list[dict]:
        """Every item of a list endpoint, page by page."""
        found, page = [], 1
        while True:
            query = urlencode({"page": page, "size": PAGE, **filters})
            answer = self._get(f"/{resource}?{query}")
            found.extend(answer.get("items", []))
            if page >= int(answer.get("total_pages") or 1):
                return found
            page += 1

    # -- what the upgrade needs ---------------------------------------------------------------
    def running_runs(self, stale_after: timedelta) -> list[RunningRun]:
        found = []
        for status in IN_PROGRESS:
            for run in self.items("runs", status=status, hydrate="true"):
                body, metadata = run.get("body") or {}, run.get("metadata") or {}
                last = max(iso_to_millis(body.get("updated")), iso_to_millis(metadata.get("start_time")))
                pipeline = ((run.get("resources") or {}).get("pipeline") or {}).get("name", "?")
                found.append(RunningRun(
                    run_id=run["id"], name=run.get("name", ""), where=f"pipeline {pipeline!r} ({status})",
                    started_at=millis_to_iso(iso_to_millis(metadata.get("start_time"))),
                    last_activity=millis_to_iso(last), stale=is_stale(last, stale_after)))
        return found

    def fingerprint(self) -> Fingerprint:
        """Hash the teams' stacks and components, pipelines, runs, artifact versions and models."""
        stacks = [{"id": s["id"], "name": s["name"],
                   "components": sorted(c["id"] for group in ((s.get("metadata") or {}).get("components") or {})
                                        .values() for c in group if c["name"] != SERVER_OWNED)}
                  for s in self.items("stacks", hydrate="true") if s["name"] != SERVER_OWNED]
        components = [{"id": c["id"], "name": c["name"], "type": c["body"]["type"],
                       "flavor": c["body"]["flavor_name"]}
                      for c in self.items("components") if c["name"] != SERVER_OWNED]
        runs = [{"id": r["id"], "name": r["name"], "status": r["body"]["status"]} for r in self.items("runs")]
        artifacts = [{"id": a["id"], "artifact": a["body"]["artifact"]["name"], "version": a["body"]["version"],
                      "uri": a["body"]["uri"], "type": a["body"]["type"]} for a in self.items("artifact_versions")]
        sections = {
            "stacks": stacks, "components": components,
            "pipelines": [{"id": p["id"], "name": p["name"]} for p in self.items("pipelines")],
            "runs": runs, "artifact_versions": artifacts,
            "models": [{"id": m["id"], "name": m["name"]} for m in self.items("models")],
            "model_versions": [{"id": v["id"], "number": v["body"]["number"], "model": v["body"]["model"]["name"]}
                               for v in self.items("model_versions")],
        }
        return Fingerprint.of({name: sorted(items, key=lambda item: item["id"]) for name, items in sections.items()})

    def smoke_test(self) -> dict:
        """A REST round trip through the database: create a tag, read it back, delete it."""
        started = time.monotonic()
        name = f"{SMOKE_TAG_PREFIX}{uuid.uuid4().hex[:12]}"
        created = self.request("POST", f"{API}/tags", {"name": name})
        try:
            read = self._get(f"/tags/{created['id']}")
            if read.get("name") != name:
                raise ServerError(f"smoke test on {self.url}: tag {created['id']} read back as {read.get('name')!r}")
        finally:
            self.request("DELETE", f"{API}/tags/{created['id']}")
        return {"tag": name, "created_and_deleted": True, "seconds": round(time.monotonic() - started, 3)}

    def follow_ups(self, new_version: str) -> dict:
        """ZenML's guide: run templates, runnable snapshots and schedules built with an older
        version must be rebuilt with the new one. The API cannot rebuild an image, so Airlock
        lists each with the version it was built with and what to do."""
        snapshots = {s["id"]: s for s in self.items("pipeline_snapshots", hydrate="true")}

        def built_with(snapshot_id: str | None) -> str | None:
            snapshot = snapshots.get(snapshot_id or "") or {}
            return (snapshot.get("metadata") or {}).get("client_version")

        stale = []
        for template in self.items("run_templates", hydrate="true"):
            source = ((template.get("resources") or {}).get("source_snapshot") or {}).get("id") or \
                (template.get("metadata") or {}).get("source_snapshot_id")
            stale.append({"kind": "run template", "id": template["id"], "name": template["name"],
                          "built_with": built_with(source)})
        for schedule in self.items("schedules", hydrate="true"):
            stale.append({"kind": "schedule", "id": schedule["id"], "name": schedule["name"],
                          "active": (schedule.get("body") or {}).get("active"),
                          "cron": (schedule.get("body") or {}).get("cron_expression")})
        for snapshot in snapshots.values():
            if (snapshot.get("body") or {}).get("runnable"):
                stale.append({"kind": "runnable snapshot", "id": snapshot["id"], "name": snapshot.get("name"),
                              "built_with": built_with(snapshot["id"])})
        rebuild = [item for item in stale if item.get("built_with") != new_version]
        return {"to_rebuild": rebuild, "count": len(rebuild),
                "action": (f"rebuild these with zenml=={new_version} (re-run the pipeline to create a new "
                           "snapshot / template; re-create schedules from the new code)") if rebuild else
                          "nothing to rebuild"}
