"""MLflow tracking server: health, version, runs, fingerprint, smoke test, migration.

Everything goes through MLflow's REST API (the same on 2.x and 3.x), never through its Python
client, so that one Airlock worker can check servers of any version.
"""

from __future__ import annotations

import time
import uuid
from datetime import timedelta
from urllib.parse import quote

from packaging.version import Version

from airlock.http import ServerError
from airlock.platforms.base import (
    Command,
    Fingerprint,
    PlatformAdapter,
    RunningRun,
    is_stale,
    millis_to_iso,
)

API = "/api/2.0/mlflow"
PAGE = 1000
FINGERPRINT_RUNS = 25
"""The newest runs whose params, tags and full metric histories the API fingerprint reads (every run of
a smaller server): a second opinion beside the database's checksums over all the data (see
migrated_data), at a cost that does not grow with the server (a request per run and metric key)."""
SMOKE_EXPERIMENT = "airlock-smoke-tests"
"""Airlock's own experiment: the smoke test writes here and the fingerprint leaves it out."""

EXPERIMENT_FIELDS = ("experiment_id", "name", "artifact_location", "lifecycle_stage", "creation_time")
RUN_FIELDS = ("run_id", "experiment_id", "run_name", "user_id", "status", "start_time", "end_time",
              "artifact_uri", "lifecycle_stage")
MODEL_FIELDS = ("name", "description", "creation_timestamp")
VERSION_FIELDS = ("name", "version", "source", "run_id", "status", "description", "current_stage",
                  "creation_timestamp")


def pick(item: dict, fields: tuple[str, ...]) -> dict:
    return {name: item.get(name) for name in fields}


def key_values(items: list[dict] | None) -> list[list]:
    return sorted([entry["key"], entry.get("value")] for entry in items or [])


class MlflowAdapter(PlatformAdapter):
    name = "mlflow"
    package = "mlflow"
    client_rule = "same major version as the server"

    def client_problem(self, client: Version, server: Version) -> str | None:
        if client.major != server.major:
            return f"MLflow {client.major}.x clients do not work with a {server.major}.x server"
        return None

    def client_env(self, scratch_dir: str) -> dict[str, str]:
        return {"MLFLOW_TRACKING_URI": self.url}

    # -- logging in: the basic-auth app's users, or a bearer token (a proxy or an auth plugin) --
    def auth_headers(self) -> dict[str, str]:
        if self.credential is None:
            return {}
        if self.credential.is_login:
            return {"Authorization": self.credential.basic_header()}
        return {"Authorization": f"Bearer {self.credential.secret}"}

    def credential_env(self) -> dict[str, str]:
        if self.credential is None:
            return {}
        if self.credential.is_login:
            return {"MLFLOW_TRACKING_USERNAME": self.credential.username,
                    "MLFLOW_TRACKING_PASSWORD": self.credential.secret}
        return {"MLFLOW_TRACKING_TOKEN": self.credential.secret}

    def access_probe(self) -> None:
        self._post("/experiments/search", {"max_results": 1})

    # -- server -------------------------------------------------------------------------------
    def health(self) -> None:
        answer = self.text("/health", public=True)
        if answer != "OK":
            raise ServerError(f"GET {self.url}/health answered {answer!r}, expected 'OK'")

    def server_version(self) -> str:
        return self.text("/version")

    def install_requirements(self, version: str) -> list[str]:
        requirements = [f"mlflow[auth]=={version}", "pymysql==1.2.4", "psycopg2-binary==2.9.13"]
        if Version(version).major < 3:
            # mlflow 2.x crashes at start with SQLAlchemy 2.1 (FallbackAsyncAdaptedQueuePool).
            requirements.append("sqlalchemy<2.1")
        return requirements

    def server_command(self, bin_dir: str, host: str, port: int, db_uri: str, artifact_root: str) -> Command:
        # The store URI (with its password) goes through the environment, not argv.
        return Command(
            argv=[f"{bin_dir}/mlflow", "server", "--host", host, "--port", str(port), "--workers", "1"],
            env={"MLFLOW_DEFAULT_ARTIFACT_ROOT": artifact_root},
            secret_env={"MLFLOW_BACKEND_STORE_URI": db_uri},
        )

    def migration_command(self, bin_dir: str, db_uri: str, artifact_root: str) -> Command:
        # `mlflow db upgrade URL` takes the URL as an argument; call the same click command with
        # the URL from the environment so that the password never shows in a process list.
        script = "import os, mlflow.db as db; db.commands(['upgrade', os.environ['AIRLOCK_DB_URI']])"
        return Command([f"{bin_dir}/python", "-c", script], secret_env={"AIRLOCK_DB_URI": db_uri})

    # -- reading ------------------------------------------------------------------------------
    def _post(self, path: str, body: dict) -> dict:
        return self.request("POST", f"{API}{path}", body)

    def _get(self, path: str) -> dict:
        return self.request("GET", f"{API}{path}")

    def _paged(self, fetch, key: str) -> list[dict]:
        items, token = [], None
        while True:
            page = fetch(token)
            items.extend(page.get(key, []))
            token = page.get("next_page_token")
            if not token:
                return items

    def experiments(self) -> list[dict]:
        return self._paged(
            lambda token: self._post("/experiments/search", {"max_results": PAGE, "view_type": "ALL",
                                                             **({"page_token": token} if token else {})}),
            "experiments",
        )

    def user_experiments(self) -> list[dict]:
        return [e for e in self.experiments() if e["name"] != SMOKE_EXPERIMENT]

    def runs(self, experiment_ids: list[str], run_filter: str = "") -> list[dict]:
        if not experiment_ids:
            return []
        body = {"experiment_ids": experiment_ids, "max_results": PAGE, "run_view_type": "ALL"}
        if run_filter:
            body["filter"] = run_filter
        return self._paged(
            lambda token: self._post("/runs/search", {**body, **({"page_token": token} if token else {})}),
            "runs",
        )

    def newest_runs(self, experiment_ids: list[str], count: int) -> list[dict]:
        """The `count` runs started last (ties broken by run id, as the server orders them)."""
        if not experiment_ids:
            return []
        return self._post("/runs/search", {"experiment_ids": experiment_ids, "max_results": count,
                                           "run_view_type": "ALL",
                                           "order_by": ["attributes.start_time DESC"]}).get("runs", [])

    def metric_history(self, run_id: str, key: str) -> list[dict]:
        path = f"/metrics/get-history?run_id={quote(run_id)}&metric_key={quote(key)}&max_results=25000"
        return self._paged(
            lambda token: self._get(path + (f"&page_token={quote(token)}" if token else "")),
            "metrics",
        )

    def registered_models(self) -> list[dict]:
        return self._paged(
            lambda token: self._get(f"/registered-models/search?max_results={PAGE}"
                                    + (f"&page_token={quote(token)}" if token else "")),
            "registered_models",
        )

    def model_versions(self, model: str) -> list[dict]:
        query = quote(f"name='{model.replace(chr(39), chr(39) * 2)}'")
        return self._paged(
            lambda token: self._get(f"/model-versions/search?filter={query}&max_results=10000"
                                    + (f"&page_token={quote(token)}" if token else "")),
            "model_versions",
        )

    # -- what the upgrade needs ---------------------------------------------------------------
    def running_runs(self, stale_after: timedelta) -> list[RunningRun]:
        experiments = {e["experiment_id"]: e["name"] for e in self.user_experiments()
                       if e.get("lifecycle_stage") == "active"}
        found = []
        for run in self.runs(list(experiments), "attributes.status = 'RUNNING'"):
            info, data = run["info"], run.get("data", {})
            last = max([int(info.get("start_time") or 0)]
                       + [int(m.get("timestamp") or 0) for m in data.get("metrics", [])])
            found.append(RunningRun(
                run_id=info["run_id"],
                name=info.get("run_name") or "",
                where=f"experiment {experiments.get(info['experiment_id'], info['experiment_id'])!r}",
                started_at=millis_to_iso(info.get("start_time")),
                last_activity=millis_to_iso(last),
                stale=is_stale(last, stale_after),
            ))
        return found

    def fingerprint(self) -> Fingerprint:
        """Hash experiments, the newest runs (params, tags, full metric histories) and the model registry."""
        experiments = self.user_experiments()
        runs, metrics = [], []
        for run in self.newest_runs([e["experiment_id"] for e in experiments], FINGERPRINT_RUNS):
            info, data = run["info"], run.get("data", {})
            runs.append({**pick(info, RUN_FIELDS), "params": key_values(data.get("params")),
                         "tags": key_values(data.get("tags"))})
            for key in sorted({m["key"] for m in data.get("metrics", [])}):
                metrics.extend([info["run_id"], key, repr(float(m["value"])), m.get("timestamp"), m.get("step")]
                               for m in self.metric_history(info["run_id"], key))
        models, versions = [], []
        for model in self.registered_models():
            aliases = sorted([a["alias"], a["version"]] for a in model.get("aliases", []))
            models.append({**pick(model, MODEL_FIELDS), "tags": key_values(model.get("tags")),
                           "aliases": aliases})
            versions.extend({**pick(v, VERSION_FIELDS), "tags": key_values(v.get("tags"))}
                            for v in self.model_versions(model["name"]))
        sections = {
            "experiments": sorted(({**pick(e, EXPERIMENT_FIELDS), "tags": key_values(e.get("tags"))}
                                   for e in experiments), key=lambda e: e["experiment_id"]),
            "runs": sorted(runs, key=lambda r: r["run_id"]),
            "metrics": sorted(metrics, key=lambda m: [str(part) for part in m]),
            "registered_models": sorted(models, key=lambda m: m["name"]),
            "model_versions": sorted(versions, key=lambda v: (v["name"], int(v["version"]))),
        }
        return Fingerprint.of(sections)

    def smoke_test(self) -> dict:
        """Log a run with a param and a metric, read it back, and finish it."""
        started = time.monotonic()
        experiment_id = self._smoke_experiment_id()
        now = int(time.time() * 1000)
        token = uuid.uuid4().hex
        run = self._post("/runs/create", {"experiment_id": experiment_id, "start_time": now,
                                          "run_name": f"smoke-{token[:8]}"})["run"]
        run_id = run["info"]["run_id"]
        self._post("/runs/log-batch", {
            "run_id": run_id,
            "params": [{"key": "airlock_token", "value": token}],
            "metrics": [{"key": "airlock_check", "value": 42.5, "timestamp": now, "step": 1}],
        })
        self._post("/runs/update", {"run_id": run_id, "status": "FINISHED", "end_time": now + 1})
        data = self._get(f"/runs/get?run_id={run_id}")["run"]
        params = dict(key_values(data["data"].get("params")))
        metrics = {m["key"]: m["value"] for m in data["data"].get("metrics", [])}
        if params.get("airlock_token") != token or metrics.get("airlock_check") != 42.5:
            raise ServerError(f"smoke test on {self.url}: run {run_id} did not read back what was logged "
                              f"(params {params}, metrics {metrics})")
        if data["info"]["status"] != "FINISHED":
            raise ServerError(f"smoke test on {self.url}: run {run_id} is {data['info']['status']}, not FINISHED")
        return {"run_id": run_id, "experiment": SMOKE_EXPERIMENT,
                "seconds": round(time.monotonic() - started, 3)}

    def _smoke_experiment_id(self) -> str:
        try:
            found = self._get(f"/experiments/get-by-name?experiment_name={quote(SMOKE_EXPERIMENT)}")
            return found["experiment"]["experiment_id"]
        except ServerError as error:
            if "RESOURCE_DOES_NOT_EXIST" not in str(error):
                raise
        return self._post("/experiments/create", {"name": SMOKE_EXPERIMENT})["experiment_id"]
