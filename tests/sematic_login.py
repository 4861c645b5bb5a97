"""What a Sematic admin does to give Airlock a login: a user with an API key, saved through Sematic's
own database functions (users are otherwise created by Google sign-in). Run with the server version's
own venv and DATABASE_URL; the key comes on stdin (never argv)."""

import sys

from sematic.db.models.factories import make_user
from sematic.db.queries import save_user

user = make_user(email="airlock@example.com", first_name="Airlock", last_name="Upgrades", avatar_url=None)
user.api_key = sys.stdin.read().strip()
save_user(user)
print(user.id)
