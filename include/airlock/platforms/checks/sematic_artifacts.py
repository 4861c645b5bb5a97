"""Load the most recent artifacts with this Sematic client (SEMATIC_API_ADDRESS, and SEMATIC_API_KEY
when the server authenticates)."""

import json
import os
import urllib.request

from sematic import api_client

count = int(os.environ["AIRLOCK_ARTIFACT_COUNT"])
url = f"{os.environ['SEMATIC_API_ADDRESS'].rstrip('/')}/api/v1/artifacts?limit={max(count, 1)}"
key = os.environ.get("SEMATIC_API_KEY")
listing = urllib.request.Request(url, headers={"X-API-KEY": key} if key else {})
with urllib.request.urlopen(listing, timeout=30) as answer:
    artifacts = json.load(answer)["content"][:count]
for artifact in artifacts:
    item = {"id": artifact["id"], "name": f"artifact {artifact['id'][:12]}"}
    try:
        value = api_client.get_artifact_value_by_id(artifact["id"])
        print(json.dumps({**item, "ok": True, "loaded": type(value).__name__}), flush=True)
    except Exception as error:  # every failure is reported, one line per artifact
        print(json.dumps({**item, "ok": False, "error": f"{type(error).__name__}: {error}"[:600]}), flush=True)
