"""Backup sets in S3: s3://<bucket>/<prefix>/<target>/<environment>/<backup id>/<file>.

Dumps are streamed into multipart uploads (no copy of the dump on local disk), hashed on the way,
optionally encrypted server-side (SSE-S3 or SSE-KMS) and tagged with target, environment, run and
versions. The manifest object is written last: a set without one is never taken as complete.
The client comes from the amazon provider's S3Hook, so credentials live in an Airflow connection.
"""

from __future__ import annotations

import hashlib
import json
from contextlib import AbstractContextManager, closing
from typing import BinaryIO
from urllib.parse import urlencode

from boto3.s3.transfer import TransferConfig
from botocore.exceptions import BotoCoreError, ClientError

from airlock.stores.base import IN_PROGRESS, BackupStore, MissingFile, StoreError, digest_of_bytes

PART = 16 * 1024 * 1024
TRANSFER = TransferConfig(multipart_threshold=PART, multipart_chunksize=PART, max_concurrency=4)


class S3StoreError(StoreError):
    """S3 refused or failed a request; the message names the object."""


class HashingReader:
    """Passes a stream through, counting and hashing every byte read from it."""

    def __init__(self, stream: BinaryIO):
        self.stream, self.sha256, self.size = stream, hashlib.sha256(), 0

    def read(self, size: int = -1) -> bytes:
        data = self.stream.read(size)
        self.sha256.update(data)
        self.size += len(data)
        return data


def parse_s3_url(url: str) -> tuple[str, str]:
    """s3://bucket/some/prefix → (bucket, some/prefix)."""
    rest = url.removeprefix("s3://")
    bucket, _, prefix = rest.partition("/")
    return bucket, prefix.strip("/")


class S3BackupStore(BackupStore):
    def __init__(self, client, url: str, target: str, environment: str, *, sse: str | None = None,
                 kms_key_id: str | None = None):
        self.client = client
        self.bucket, prefix = parse_s3_url(url)
        self.base = "/".join(part for part in (prefix, target, environment) if part)
        self.sse, self.kms_key_id = sse, kms_key_id

    def key(self, backup_id: str, name: str = "") -> str:
        return f"{self.base}/{backup_id}/{name}"

    # -- the target's upgrade log, beside its environments' folders -------------------------------
    def target_key(self, name: str) -> str:
        return f"{self.base.rsplit('/', 1)[0]}/{name}"

    def target_location(self, name: str) -> str:
        return f"s3://{self.bucket}/{self.target_key(name)}"

    def read_target_text(self, name: str) -> str | None:
        key = self.target_key(name)
        if not self.exists(key):
            return None
        body = self.call(f"download of s3://{self.bucket}/{key}", self.client.get_object, Bucket=self.bucket,
                         Key=key)["Body"]
        with closing(body):
            return body.read().decode()

    def write_target_text(self, name: str, text: str) -> str:
        self.put_bytes(self.target_key(name), text.encode())
        return self.target_location(name)

    def location(self, backup_id: str) -> str:
        return f"s3://{self.bucket}/{self.key(backup_id)}"

    def extra_args(self, tags: dict[str, str] | None) -> dict:
        args: dict = {}
        if self.sse:
            args["ServerSideEncryption"] = self.sse
        if self.kms_key_id:
            args["SSEKMSKeyId"] = self.kms_key_id
        if tags:
            args["Tagging"] = urlencode(tags)
        return args

    def call(self, what: str, method, **kwargs):
        try:
            return method(**kwargs)
        except (ClientError, BotoCoreError) as error:
            raise S3StoreError(f"S3 {what} failed: {error}") from None

    # -- files -----------------------------------------------------------------------------------
    def begin(self, backup_id: str) -> None:
        self.delete(backup_id)
        return None

    def directory(self, backup_id: str) -> None:
        return None

    def put_stream(self, backup_id: str, name: str, stream: BinaryIO, tags: dict[str, str]) -> dict:
        reader = HashingReader(stream)
        key = self.key(backup_id, name)
        try:  # a failed multipart upload is aborted by the transfer manager: nothing half-written stays
            self.client.upload_fileobj(reader, self.bucket, key, ExtraArgs=self.extra_args(tags), Config=TRANSFER)
        except (ClientError, BotoCoreError) as error:
            raise S3StoreError(f"upload of s3://{self.bucket}/{key} failed after {reader.size} bytes: "
                               f"{error}") from None
        return {"sha256": reader.sha256.hexdigest(), "bytes": reader.size}

    def copy_file(self, source_id: str, backup_id: str, name: str, tags: dict[str, str]) -> None:
        """A server-side copy (multipart beyond a part's size), tagged as the new set's."""
        source, key = self.key(source_id, name), self.key(backup_id, name)
        self.call(f"copy of s3://{self.bucket}/{source} to s3://{self.bucket}/{key}", self.client.copy,
                  CopySource={"Bucket": self.bucket, "Key": source}, Bucket=self.bucket, Key=key,
                  ExtraArgs={**self.extra_args(tags), "TaggingDirective": "REPLACE"}, Config=TRANSFER)

    def open_stream(self, backup_id: str, name: str) -> AbstractContextManager[BinaryIO]:
        key = self.key(backup_id, name)
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"]
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                raise MissingFile(f"s3://{self.bucket}/{key} does not exist") from None
            raise S3StoreError(f"S3 download of s3://{self.bucket}/{key} failed: {error}") from None
        except BotoCoreError as error:
            raise S3StoreError(f"S3 download of s3://{self.bucket}/{key} failed: {error}") from None
        return closing(body)

    def digest(self, backup_id: str, name: str) -> dict | None:
        if not self.exists(self.key(backup_id, name)):
            return None
        digest, size = hashlib.sha256(), 0
        with self.open_stream(backup_id, name) as body:
            for block in iter(lambda: body.read(1 << 20), b""):
                digest.update(block)
                size += len(block)
        return {"sha256": digest.hexdigest(), "bytes": size}

    def exists(self, key: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise S3StoreError(f"S3 head of s3://{self.bucket}/{key} failed: {error}") from None
        return True

    def put_bytes(self, key: str, payload: bytes, tags: dict[str, str] | None = None) -> dict:
        self.call(f"upload of s3://{self.bucket}/{key}", self.client.put_object, Bucket=self.bucket, Key=key,
                  Body=payload, **self.extra_args(tags))
        return digest_of_bytes(payload)

    def get_json(self, key: str) -> dict | None:
        if not self.exists(key):
            return None
        body = self.call(f"download of s3://{self.bucket}/{key}", self.client.get_object, Bucket=self.bucket,
                         Key=key)["Body"]
        with closing(body):
            return json.loads(body.read())

    def write_json(self, backup_id: str, name: str, data: dict, tags: dict[str, str] | None = None) -> dict:
        return self.put_bytes(self.key(backup_id, name), json.dumps(data, indent=2, sort_keys=True).encode(), tags)

    def read_json(self, backup_id: str, name: str) -> dict | None:
        return self.get_json(self.key(backup_id, name))

    def keys_under(self, prefix: str) -> list[str]:
        paginator = self.client.get_paginator("list_objects_v2")
        try:
            return [item["Key"] for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix)
                    for item in page.get("Contents", [])]
        except (ClientError, BotoCoreError) as error:
            raise S3StoreError(f"S3 listing of s3://{self.bucket}/{prefix} failed: {error}") from None

    def backup_ids(self) -> list[str]:
        ids = {key.removeprefix(self.base + "/").split("/", 1)[0] for key in self.keys_under(self.base + "/")}
        return sorted(backup_id for backup_id in ids if backup_id and backup_id != IN_PROGRESS)

    def delete(self, backup_id: str) -> None:
        keys = self.keys_under(self.key(backup_id))
        for start in range(0, len(keys), 1000):
            batch = [{"Key": key} for key in keys[start:start + 1000]]
            self.call(f"delete under {self.location(backup_id)}", self.client.delete_objects, Bucket=self.bucket,
                      Delete={"Objects": batch, "Quiet": True})

    # -- the upgrade marker ----------------------------------------------------------------------
    def marker_location(self) -> str:
        return f"s3://{self.bucket}/{self.base}/{IN_PROGRESS}"

    def create_marker(self, record: dict) -> bool:
        """A conditional put (If-None-Match: *): S3 refuses it with 412 when the marker exists."""
        key = f"{self.base}/{IN_PROGRESS}"
        try:
            self.client.put_object(Bucket=self.bucket, Key=key, IfNoneMatch="*",
                                   Body=json.dumps(record, indent=2, sort_keys=True).encode())
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") in ("PreconditionFailed", "412",
                                                                "ConditionalRequestConflict"):
                return False
            raise S3StoreError(f"S3 conditional upload of s3://{self.bucket}/{key} failed: {error}") from None
        except BotoCoreError as error:
            raise S3StoreError(f"S3 conditional upload of s3://{self.bucket}/{key} failed: {error}") from None
        return True

    def write_marker(self, record: dict) -> None:
        self.put_bytes(f"{self.base}/{IN_PROGRESS}", json.dumps(record, indent=2, sort_keys=True).encode())

    def read_marker(self) -> dict | None:
        return self.get_json(f"{self.base}/{IN_PROGRESS}")

    def delete_marker(self) -> None:
        self.call("delete of the upgrade marker", self.client.delete_object, Bucket=self.bucket,
                  Key=f"{self.base}/{IN_PROGRESS}")

