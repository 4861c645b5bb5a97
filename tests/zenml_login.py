"""What a ZenML admin does to give Airlock a login: a service account and an API key.

Run with the server version's own client: ZENML_STORE_URL at the server, ZENML_STORE_USERNAME /
ZENML_STORE_PASSWORD the default admin, ZENML_CONFIG_PATH a scratch dir. Prints the API key.
"""

from zenml.client import Client

client = Client()
account = client.create_service_account(name="airlock", description="Airlock upgrades")
if isinstance(account, tuple):  # some versions return (account, api_key)
    account = account[0]
key = client.create_api_key(service_account_name_id_or_prefix=account.id, name="airlock-upgrades")
print(key.key)
