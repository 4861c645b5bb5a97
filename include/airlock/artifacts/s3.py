"""Artifacts under an S3 prefix. A versioned bucket is its own copy: the inventory records each
object's version id, and a restore copies that version back over the key (the history stays). An
unversioned bucket's objects are copied into the backup set (the guide's `aws s3 sync`). Objects
are compared by size and ETag (the same bytes uploaded the same way give the same ETag)."""

from __future__ import annotations

from contextlib import closing

from boto3.s3.transfer import TransferConfig
from botocore.exceptions import BotoCoreError, ClientError

from airlock.artifacts.base import COPY, ArtifactError, ArtifactStore, copy_location
from airlock.stores.base import BackupStore
from airlock.stores.s3 import parse_s3_url

SINGLE_PART = TransferConfig(multipart_threshold=5 * 1024**3)
"""A restored object is uploaded in one part (up to S3's 5 GB), so its ETag is its MD5 again."""


class S3Artifacts(ArtifactStore):
    def __init__(self, client, url: str):
        self.client = client
        self.bucket, self.prefix = parse_s3_url(url)
        self.location = url

    def call(self, what: str, method, **kwargs):
        try:
            return method(**kwargs)
        except (ClientError, BotoCoreError) as error:
            raise ArtifactError(f"S3 {what} of the artifact store {self.location} failed: {error}") from None

    @property
    def under(self) -> str:
        return f"{self.prefix}/" if self.prefix else ""

    def versioned(self) -> bool:
        answer = self.call("GetBucketVersioning", self.client.get_bucket_versioning, Bucket=self.bucket)
        return answer.get("Status") == "Enabled"

    def inventory(self) -> dict[str, dict]:
        return self.current(self.versioned())

    def current(self, versioned: bool) -> dict[str, dict]:
        """key (below the prefix) → size, ETag and, in a versioned bucket, the current version's id."""
        if not versioned:
            pages = self.call("listing", self.client.get_paginator("list_objects_v2").paginate,
                              Bucket=self.bucket, Prefix=self.under)
            return {item["Key"].removeprefix(self.under): {"bytes": item["Size"], "etag": item["ETag"]}
                    for page in self.pages(pages) for item in page.get("Contents", [])}
        pages = self.call("listing of versions", self.client.get_paginator("list_object_versions").paginate,
                          Bucket=self.bucket, Prefix=self.under)
        return {item["Key"].removeprefix(self.under): {"bytes": item["Size"], "etag": item["ETag"],
                                                       "version_id": item["VersionId"]}
                for page in self.pages(pages) for item in page.get("Versions", []) if item["IsLatest"]}

    def pages(self, pages):
        try:
            yield from pages
        except (ClientError, BotoCoreError) as error:
            raise ArtifactError(f"S3 listing of the artifact store {self.location} failed: {error}") from None

    @staticmethod
    def same(before: dict, after: dict) -> bool:
        """The same bytes: size and ETag (a new version with the same content is the same artifact).
        A multipart upload's ETag depends on its part sizes, not only on the bytes: such an object is
        compared by size."""
        if before["bytes"] != after["bytes"]:
            return False
        return before["etag"] == after["etag"] or "-" in before["etag"] or "-" in after["etag"]

    def keep(self, store: BackupStore, backup_id: str, tags: dict[str, str]) -> dict:
        if self.versioned():
            objects = self.current(versioned=True)
            return {"objects": objects, "kept": {"by": f"the versions of bucket {self.bucket}", "copies": 0}}
        objects = self.current(versioned=False)
        for key in objects:
            body = self.call(f"download of {key}", self.client.get_object, Bucket=self.bucket,
                             Key=self.under + key)["Body"]
            with closing(body):
                objects[key]["sha256"] = store.put_stream(backup_id, f"{COPY}/{key}", body, tags)["sha256"]
        return {"objects": objects, "kept": {"copy": copy_location(store, backup_id), "copies": len(objects)}}

    def put_back(self, store: BackupStore, backup_id: str, key: str, entry: dict) -> None:
        if entry.get("version_id"):
            source = {"Bucket": self.bucket, "Key": self.under + key, "VersionId": entry["version_id"]}
            self.call(f"copy of version {entry['version_id']} of {key}", self.client.copy_object,
                      Bucket=self.bucket, Key=self.under + key, CopySource=source)
            return
        with store.open_stream(backup_id, f"{COPY}/{key}") as copy:
            self.call(f"upload of {key}", self.client.upload_fileobj, Fileobj=copy, Bucket=self.bucket,
                      Key=self.under + key, Config=SINGLE_PART)
