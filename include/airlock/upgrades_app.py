"""The Upgrades page's FastAPI app, mounted in Airflow's API server by plugins/airlock_upgrades.py.

A plugin's app is not behind Airflow's authentication by itself: every route asks Airflow who the
caller is (its session cookie or a bearer token: no user, 401) and shows only the targets whose
upgrade DAG the user may read, through the auth manager Airflow runs with (a target the user may not
read: 403). It reads the targets file, each target's upgrade log and markers (local or S3), and the
Airlock task instances that wait on a person, on running pipelines or on a window.
"""

from __future__ import annotations

from datetime import UTC, datetime

from airflow.api_fastapi.core_api.security import GetUserDep
from fastapi import FastAPI, HTTPException, status
from fastapi.responses import HTMLResponse
from sqlalchemy import select

from airlock import upgrade_log
from airlock.config import ENVIRONMENTS, TargetConfig, load_targets
from airlock.config_reader import ConfigError
from airlock.environment import log_place, open_store
from airlock.upgrades_page import InFlight, TargetView, render_page

WAITING_STATES = ("running", "deferred", "awaiting_input", "up_for_reschedule", "queued", "scheduled")
PREFIX = "/airlock"
PAGE = "/upgrades"

app = FastAPI(title="Airlock upgrades", docs_url=None, redoc_url=None, openapi_url=None)


def may_read(user, dag_id: str) -> bool:
    """What Airflow's own routes ask before showing a DAG (requires_access_dag's question)."""
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.models.resource_details import DagDetails
    from airflow.models.dag import DagModel

    return get_auth_manager().is_authorized_dag(
        method="GET", details=DagDetails(id=dag_id, team_name=DagModel.get_team_name(dag_id)), user=user)


def target_view(target: TargetConfig) -> TargetView:
    """A target's log and markers; what cannot be read is said on the page, not raised."""
    problems, records, markers = [], [], {}
    try:
        records = upgrade_log.read(log_place(target))
    except Exception as error:  # one unreadable store must not take the page down for every target
        problems.append(f"upgrade log: {error}")
    for environment in ENVIRONMENTS:
        try:
            marker = open_store(target, environment).read_marker()
        except Exception as error:
            problems.append(f"{environment} marker: {error}")
            continue
        if marker:
            markers[environment] = marker
    return TargetView(target.name, target.platform, records, target.downtime_goal_minutes * 60, markers,
                      "; ".join(problems) or None)


def waiting_task_instances(dag_ids: list[str]) -> tuple[list[InFlight], set[str]]:
    """(Airlock task instances not finished, run ids of running runs) from Airflow's database."""
    from airflow.models.dagrun import DagRun
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = session.execute(
            select(TaskInstance.dag_id, TaskInstance.run_id, TaskInstance.task_id, TaskInstance.state,
                   TaskInstance.start_date)
            .where(TaskInstance.dag_id.in_(dag_ids), TaskInstance.state.in_(WAITING_STATES))).all()
        running = set(session.scalars(select(DagRun.run_id).where(DagRun.dag_id.in_(dag_ids),
                                                                 DagRun.state == "running")))
    return [InFlight(dag_id, run_id, task_id, str(state), start.isoformat(timespec="seconds") if start else None)
            for dag_id, run_id, task_id, state, start in rows], running


def targets() -> dict[str, TargetConfig]:
    """The targets file, as the DAGs read it; a broken one is said (file, target, field), not a bare 500."""
    try:
        return load_targets()
    except ConfigError as error:
        raise HTTPException(status.HTTP_500_INTERNAL_SERVER_ERROR, f"the targets file is broken: {error}") from None


def readable_targets(user) -> dict[str, TargetConfig]:
    return {name: target for name, target in targets().items() if may_read(user, target.dag_id)}


def page(targets: list[TargetConfig], root: str) -> HTMLResponse:
    dag_ids = [dag_id for t in targets for dag_id in (t.dag_id, f"airlock_rollback__{t.name}")]
    in_flight, running = waiting_task_instances(dag_ids) if dag_ids else ([], set())
    html = render_page([target_view(target) for target in targets], in_flight, running, root,
                       datetime.now(UTC).isoformat(timespec="seconds"))
    return HTMLResponse(html, headers={"Cache-Control": "no-store"})


@app.get(PAGE, response_class=HTMLResponse)
def upgrades(user: GetUserDep) -> HTMLResponse:
    """Every target the user may read."""
    targets = readable_targets(user)
    if not targets:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "you may read none of Airlock's upgrade DAGs")
    return page(list(targets.values()), root="../")


@app.get(PAGE + "/targets/{name}", response_class=HTMLResponse)
def one_target(name: str, user: GetUserDep) -> HTMLResponse:
    target = targets().get(name)
    if target is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no target {name!r} in the targets file")
    if not may_read(user, target.dag_id):
        raise HTTPException(status.HTTP_403_FORBIDDEN, f"you may not read {target.dag_id}")
    return page([target], root="../../../")
