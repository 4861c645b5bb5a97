"""Airlock's Upgrades page in the Airflow UI: a FastAPI app in the API server (include/airlock/
upgrades_app.py) and its entry in the navigation."""

from typing import ClassVar

from airflow.plugins_manager import AirflowPlugin
from airlock.upgrades_app import PAGE, PREFIX, app


class AirlockUpgradesPlugin(AirflowPlugin):
    name = "airlock_upgrades"
    fastapi_apps: ClassVar[list[dict]] = [{"app": app, "url_prefix": PREFIX, "name": "Airlock upgrades"}]
    external_views: ClassVar[list[dict]] = [{"name": "Upgrades", "href": PREFIX.lstrip("/") + PAGE,
                                             "destination": "nav", "url_route": "airlock-upgrades"}]
