"""A bearer-token login for MLflow's basic-auth app, through its documented `authorization_function`
hook (as an organisation's token plugin or an auth proxy would do it): the server knows only the
token's SHA-256 (env AIRLOCK_TEST_BEARER_SHA256), and a request with that token acts as the admin."""

import hashlib
import hmac
import os

from flask import Response, request
from werkzeug.datastructures import Authorization


def authenticate_request_token():
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    expected = os.environ["AIRLOCK_TEST_BEARER_SHA256"]
    if scheme.lower() == "bearer" and hmac.compare_digest(hashlib.sha256(token.encode()).hexdigest(), expected):
        return Authorization("bearer", {"username": os.environ.get("AIRLOCK_TEST_BEARER_USER", "admin")})
    return Response("a bearer token is required", 401, {"WWW-Authenticate": "Bearer"})
