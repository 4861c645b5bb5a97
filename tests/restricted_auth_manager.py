"""Airflow's simple auth manager, with some users allowed to read only some DAGs
($AIRLOCK_TEST_DAG_GRANTS: {"user": ["dag_id", ...]}), as a site's own auth manager (FAB roles,
Keycloak) restricts them: the Upgrades page must honour whatever the auth manager decides."""

import json
import os

from airflow.api_fastapi.auth.managers.simple.simple_auth_manager import SimpleAuthManager


class RestrictedAuthManager(SimpleAuthManager):
    def is_authorized_dag(self, *, method, user, access_entity=None, details=None) -> bool:
        granted = json.loads(os.environ.get("AIRLOCK_TEST_DAG_GRANTS", "{}")).get(user.get_name())
        if granted is not None and (details is None or details.id not in granted):
            return False
        return super().is_authorized_dag(method=method, user=user, access_entity=access_entity, details=details)
