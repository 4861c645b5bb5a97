"""Load the most recent artifact versions with this ZenML client (ZENML_STORE_URL)."""

import json
import os

from zenml.client import Client

count = int(os.environ["AIRLOCK_ARTIFACT_COUNT"])
for version in Client().list_artifact_versions(sort_by="desc:created", size=max(count, 1)).items[:count]:
    item = {"id": str(version.id), "name": f"{version.artifact.name} version {version.version}"}
    try:
        value = version.load()
        print(json.dumps({**item, "ok": True, "loaded": type(value).__name__}), flush=True)
    except Exception as error:  # every failure is reported, one line per artifact version
        print(json.dumps({**item, "ok": False, "error": f"{type(error).__name__}: {error}"[:600]}), flush=True)
