"""Pausing and unpausing the teams' DAGs, and the production slot's pool, through Airflow's REST API.

A task cannot change another DAG through the Task SDK, so Airlock uses the public API, as an
operator would from the UI. The connection (`drain.airflow_api_conn_id`) holds the API's base URL
(host, with scheme and port) and, unless the API needs no login, a user name and password that
are exchanged for a token at `/auth/token`. Airlock records which DAGs IT paused, so that it
never unpauses a DAG somebody had paused on purpose.
"""

from __future__ import annotations

from urllib.parse import quote

from airlock.http import ServerError, request_json


class AirflowApi:
    """The few calls Airlock needs, with a bearer token when the connection has credentials."""

    def __init__(self, base_url: str, login: str = "", password: str = ""):
        self.base_url = base_url.rstrip("/")
        self.login, self.password = login, password
        self._headers: dict[str, str] | None = None

    @classmethod
    def from_connection(cls, conn_id: str) -> AirflowApi:
        from airflow.sdk import BaseHook
        from airflow.sdk.log import mask_secret

        conn = BaseHook.get_connection(conn_id)
        host = conn.host or ""
        if not host.startswith(("http://", "https://")):
            host = f"{conn.schema or 'http'}://{host}"
        if conn.port:
            host = f"{host}:{conn.port}"
        if conn.password:
            mask_secret(conn.password)
        return cls(host, conn.login or "", conn.password or "")

    def headers(self) -> dict[str, str]:
        if self._headers is None:
            self._headers = {}
            if self.login:
                token = request_json("POST", f"{self.base_url}/auth/token",
                                     {"username": self.login, "password": self.password})["access_token"]
                self._headers = {"Authorization": f"Bearer {token}"}
        return self._headers

    def dag_url(self, dag_id: str) -> str:
        return f"{self.base_url}/api/v2/dags/{quote(dag_id, safe='')}"

    def is_paused(self, dag_id: str) -> bool:
        return bool(request_json("GET", self.dag_url(dag_id), headers=self.headers())["is_paused"])

    def set_paused(self, dag_id: str, paused: bool) -> None:
        answer = request_json("PATCH", f"{self.dag_url(dag_id)}?update_mask=is_paused", {"is_paused": paused},
                              headers=self.headers())
        if bool(answer.get("is_paused")) != paused:
            raise ServerError(f"Airflow did not {'pause' if paused else 'unpause'} DAG {dag_id}: {answer}")

    def pool(self, name: str) -> dict:
        return request_json("GET", f"{self.base_url}/api/v2/pools/{quote(name, safe='')}", headers=self.headers())

    def create_pool(self, name: str, slots: int, description: str, include_deferred: bool) -> dict:
        return request_json("POST", f"{self.base_url}/api/v2/pools", {
            "name": name, "slots": slots, "description": description, "include_deferred": include_deferred},
            headers=self.headers())


class PausedRecord:
    """Which DAGs Airlock paused for one environment of one target, kept in an Airflow Variable so
    that a retried or cleared task (and a later run, after a crash) still knows what to unpause."""

    def __init__(self, target: str, environment: str):
        self.key = f"airlock_paused_dags__{target}__{environment}"

    def read(self) -> list[str]:
        from airflow.sdk import Variable

        return list(Variable.get(self.key, default=[], deserialize_json=True))

    def write(self, dag_ids: list[str]) -> None:
        from airflow.sdk import Variable

        if dag_ids:
            Variable.set(self.key, dag_ids, serialize_json=True,
                         description="DAGs paused by an Airlock upgrade; unpaused when it ends")
        else:
            Variable.delete(self.key)


def pause(api: AirflowApi, dag_ids: list[str], record: PausedRecord) -> dict:
    """Pause each DAG that is not paused yet, recording each one before going on."""
    ours = record.read()
    left_alone = []
    for dag_id in dag_ids:
        if dag_id not in ours and api.is_paused(dag_id):
            left_alone.append(dag_id)  # paused by somebody else: not ours to unpause
            continue
        if dag_id not in ours:
            ours.append(dag_id)
            record.write(ours)
        api.set_paused(dag_id, True)
    return {"paused": ours, "already_paused_left_alone": left_alone}


def unpause(api: AirflowApi, record: PausedRecord) -> dict:
    """Unpause the DAGs Airlock paused; every one is tried even when another fails."""
    ours, failures = record.read(), []
    paused_by_us = list(ours)
    for dag_id in paused_by_us:
        try:
            api.set_paused(dag_id, False)
            ours.remove(dag_id)
            record.write(ours)
        except ServerError as error:
            failures.append(f"{dag_id}: {error}")
    if failures:
        raise ServerError("could not unpause (clear this task to try again, or unpause them in the UI):\n  - "
                          + "\n  - ".join(failures))
    return {"unpaused": paused_by_us}
