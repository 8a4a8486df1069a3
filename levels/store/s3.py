"""The blob store on S3 (any S3-compatible server: SeaweedFS, MinIO, AWS), through boto3.

Objects are `blobs/<key[:2]>/<key>` in one bucket, the key being the SHA-256 of the bytes
as with the directory store. A PUT is atomic and acknowledged only once stored, so it is
the durable write `BlobStore.put` promises; the caller commits the metadata naming the
blob after it, and a crash in between leaves an orphan object for `--check --repair`.
Credentials come from boto3's usual chain (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY,
~/.aws, instance roles). The bucket is created when missing. A server that cannot be
reached, or that answers with a server error, raises Unavailable naming the endpoint.
"""

import hashlib
from typing import Any

from levels.errors import NotFound, Unavailable
from levels.store.blobs import check_key, is_key

PREFIX = "blobs/"


class S3BlobStore:
    def __init__(self, endpoint: str, bucket: str) -> None:
        import boto3
        import botocore.config
        import botocore.exceptions

        if not bucket:
            raise Unavailable("S3 blob store: no bucket configured (s3_bucket, QFS_S3_BUCKET)")
        self.endpoint = endpoint or "the default AWS endpoint"
        self._bucket = bucket
        self._missing = {"404", "NoSuchKey", "NotFound"}
        self._unreachable = (botocore.exceptions.EndpointConnectionError,
                             botocore.exceptions.ConnectionClosedError,
                             botocore.exceptions.ConnectTimeoutError,
                             botocore.exceptions.ReadTimeoutError)
        self._client_error = botocore.exceptions.ClientError
        self._no_credentials = botocore.exceptions.NoCredentialsError
        self._s3 = boto3.session.Session().client(
            "s3", endpoint_url=endpoint or None,
            config=botocore.config.Config(
                connect_timeout=3, read_timeout=60, max_pool_connections=16,
                retries={"max_attempts": 2, "mode": "standard"},
                s3={"addressing_style": "path"}))
        self._ensure_bucket()

    def _call(self, method: str, **kwargs: Any) -> Any:
        try:
            return getattr(self._s3, method)(Bucket=self._bucket, **kwargs)
        except self._unreachable as exc:
            raise Unavailable(f"blob store unreachable: S3 at {self.endpoint}: {exc}") from exc
        except self._no_credentials as exc:
            raise Unavailable(f"S3 at {self.endpoint}: {exc} (AWS_ACCESS_KEY_ID and "
                              "AWS_SECRET_ACCESS_KEY, or boto3's other sources)") from exc
        except self._client_error as exc:
            if self._status(exc) < 500:
                raise  # the caller's to read: a missing key, a missing bucket
            # The server failed (a full disk, an overloaded gateway) after boto3's retries.
            raise Unavailable(f"blob store failing: S3 at {self.endpoint} answered "
                              f"{self._code(exc)} (HTTP {self._status(exc)})") from exc

    @staticmethod
    def _status(exc: Exception) -> int:
        return int(getattr(exc, "response", {}).get("ResponseMetadata", {})
                   .get("HTTPStatusCode", 0))

    @staticmethod
    def _code(exc: Exception) -> str:
        return str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))

    def _ensure_bucket(self) -> None:
        try:
            self._call("head_bucket")
        except self._client_error as exc:
            if self._code(exc) not in self._missing | {"NoSuchBucket"}:
                raise Unavailable(f"S3 at {self.endpoint}: bucket {self._bucket}: "
                                  f"{exc}") from exc
            try:
                self._call("create_bucket")
            except self._client_error as again:  # another host made it meanwhile
                if self._code(again) not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                    raise Unavailable(f"S3 at {self.endpoint}: cannot create bucket "
                                      f"{self._bucket}: {again}") from again

    @staticmethod
    def _name(key: str) -> str:
        return f"{PREFIX}{check_key(key)[:2]}/{key}"

    def put(self, data: bytes) -> str:
        key = hashlib.sha256(data).hexdigest()
        self._call("put_object", Key=self._name(key), Body=data)
        return key

    def get(self, key: str) -> bytes:
        try:
            return self._call("get_object", Key=self._name(key))["Body"].read()
        except self._client_error as exc:
            if self._code(exc) in self._missing:
                raise NotFound(f"blob {key} is missing from bucket {self._bucket}") from None
            raise

    def get_range(self, key: str, offset: int, size: int) -> bytes:
        name = self._name(key)
        if size <= 0:
            return b""
        try:
            reply = self._call("get_object", Key=name, Range=f"bytes={offset}-{offset + size - 1}")
        except self._client_error as exc:
            code = self._code(exc)
            if code in self._missing:
                raise NotFound(f"blob {key} is missing from bucket {self._bucket}") from None
            if code == "InvalidRange":  # at or past the end: what pread gives there
                self._call("head_object", Key=name)
                return b""
            raise
        return reply["Body"].read()

    def delete(self, key: str) -> None:
        self._call("delete_object", Key=self._name(key))

    def list(self) -> list[str]:
        keys = []
        pages = self._s3.get_paginator("list_objects_v2").paginate(
            Bucket=self._bucket, Prefix=PREFIX)
        try:
            for page in pages:
                for entry in page.get("Contents", []):
                    name = entry["Key"].rsplit("/", 1)[-1]
                    if is_key(name):
                        keys.append(name)
        except self._unreachable as exc:
            raise Unavailable(f"blob store unreachable: S3 at {self.endpoint}: {exc}") from exc
        return sorted(keys)
