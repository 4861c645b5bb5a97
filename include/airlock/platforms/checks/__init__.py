"""Scripts that run inside a platform version's own virtualenv, with its client, against a server.

Each loads the AIRLOCK_ARTIFACT_COUNT most recent models or artifacts and prints one JSON line
per item: {"id", "name", "ok", "error"?}. They import only the platform's own package.
"""
