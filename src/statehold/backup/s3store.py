"""A store in an S3 bucket (any S3-compatible server: AWS, SeaweedFS, MinIO, Ceph RGW).

botocore's own retries are switched off: transient faults (connection errors, timeouts,
HTTP 5xx, throttling) are retried here through :class:`~.retry.Backoff`, so the policy is
one object tests can drive without sleeping, and the final error is :class:`Unavailable`.
Objects above ``multipart_threshold`` go up as multipart uploads.
"""

from __future__ import annotations

import configparser
import contextlib
import http.client
import io
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import botocore.config
import botocore.exceptions
import botocore.session

from statehold.backup.retry import Backoff, TransientError
from statehold.backup.store import ObjectInfo, check_key, check_range
from statehold.errors import InvalidArgument, NotFound, PermissionDenied, Unavailable

T = TypeVar("T")

_TRANSIENT_CODES = {"InternalError", "ServiceUnavailable", "SlowDown", "RequestTimeout",
                    "Throttling", "ThrottlingException", "RequestTimeTooSkewed"}
_DENIED_CODES = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "Forbidden"}


@dataclass(frozen=True, slots=True)
class S3Config:
    bucket: str
    prefix: str = ""
    endpoint: str | None = None
    """URL of an S3-compatible server; None means AWS."""
    region: str = "us-east-1"
    access_key: str | None = None
    secret_key: str | None = field(default=None, repr=False)
    credentials_file: Path | None = None
    """AWS shared-credentials format file ([default] aws_access_key_id=...)."""
    profile: str = "default"
    parallelism: int = 16
    """Connection pool size: the most requests in flight at once."""
    multipart_threshold: int = 64 * 1024 * 1024
    part_size: int = 16 * 1024 * 1024
    connect_timeout: float = 5.0
    read_timeout: float = 60.0


def _read_credentials(path: Path, profile: str) -> tuple[str, str]:
    parser = configparser.ConfigParser()
    try:
        with open(path) as f:
            parser.read_file(f)
        section = parser[profile]
        return section["aws_access_key_id"], section["aws_secret_access_key"]
    except (OSError, KeyError, configparser.Error) as exc:
        raise InvalidArgument(f"S3 credentials file {path}: no usable [{profile}] keys ({exc})") from exc


class _ViewReader(io.RawIOBase):
    """A seekable, read-only file over a memoryview: a request body botocore and urllib3
    read in pieces (to sign it, then to send it, again on a retry) without a copy of the
    whole."""

    def __init__(self, view: memoryview) -> None:
        super().__init__()
        self._view = view.cast("B") if view.format != "B" or view.ndim != 1 else view
        self._pos = 0

    def __len__(self) -> int:
        return len(self._view)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: len(self._view)}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, b: Any) -> int:
        piece = self._view[self._pos : self._pos + len(b)]
        n = len(piece)
        memoryview(b).cast("B")[:n] = piece
        self._pos += n
        return n

    def read(self, size: int | None = -1) -> bytes:
        end = len(self._view) if size is None or size < 0 else min(len(self._view), self._pos + size)
        out = self._view[self._pos : end].tobytes()
        self._pos = max(self._pos, end)
        return out


def _body(data: bytes | memoryview) -> bytes | _ViewReader:
    return _ViewReader(data) if isinstance(data, memoryview) else data


def _read_body_into(body: Any, buf: memoryview, expect: int) -> int:
    """Read a response body of ``expect`` bytes into ``buf``: through the http.client
    response under botocore's and urllib3's wrappers when it is there (recv straight into
    ``buf``), else by botocore's reads and a copy. A short body is a transient fault."""
    want = min(expect, len(buf))
    raw: Any = getattr(body, "_raw_stream", None)
    fp = getattr(raw, "_fp", None)
    got = 0
    if isinstance(fp, http.client.HTTPResponse) and hasattr(raw, "release_conn"):
        try:
            while got < want:
                n = fp.readinto(buf[got:want])
                if not n:
                    break
                got += n
        except OSError as exc:
            raise TransientError(f"reading a response body: {exc}") from exc
        if got == expect:
            raw.release_conn()  # fully read: the connection goes back to the pool
        else:
            raw.close()
    else:
        while got < want:
            piece = body.read(min(want - got, 1 << 20))
            if not piece:
                break
            buf[got : got + len(piece)] = piece
            got += len(piece)
    if got != want:
        raise TransientError(f"response body ended after {got} of {want} bytes")
    return got


class S3Store:
    def __init__(self, config: S3Config, *, backoff: Backoff | None = None) -> None:
        if not config.bucket:
            raise InvalidArgument("S3 bucket name is empty")
        self.config = config
        self.backoff = backoff or Backoff()
        self._prefix = config.prefix.strip("/") + "/" if config.prefix.strip("/") else ""
        access, secret = config.access_key, config.secret_key
        if config.credentials_file is not None:
            access, secret = _read_credentials(config.credentials_file, config.profile)
        # botocore's session, not boto3's: boto3 adds only resources and s3transfer, whose
        # imports cost every backup process ~0.1 s of CPU before its first request
        session = botocore.session.get_session()
        self._client: Any = session.create_client(
            "s3",
            endpoint_url=config.endpoint,
            region_name=config.region,
            aws_access_key_id=access,
            aws_secret_access_key=secret,
            config=botocore.config.Config(
                retries={"total_max_attempts": 1, "mode": "standard"},
                max_pool_connections=max(1, config.parallelism),
                connect_timeout=config.connect_timeout,
                read_timeout=config.read_timeout,
                s3={"addressing_style": "path"},
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            ),
        )
        self._tls = threading.local()

    @property
    def parallelism(self) -> int:
        """Requests worth having in flight (the connection pool size)."""
        return self.config.parallelism

    def describe(self) -> str:
        where = self.config.endpoint or "aws"
        return f"s3://{self.config.bucket}/{self._prefix} ({where})"

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        def attempt() -> T:
            try:
                return fn()
            except botocore.exceptions.ClientError as exc:
                err = exc.response.get("Error", {})
                code = str(err.get("Code", ""))
                status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
                if code in ("NoSuchKey", "404", "NotFound"):
                    raise NotFound(f"{what}: not found in {self.describe()}") from exc
                if code == "NoSuchBucket":
                    raise NotFound(f"{what}: bucket {self.config.bucket} does not exist") from exc
                if code in ("InvalidBucketName", "InvalidArgument", "KeyTooLongError"):
                    raise InvalidArgument(f"{what}: S3 refused the request ({code})") from exc
                if code in _DENIED_CODES or status == 403:
                    raise PermissionDenied(f"{what}: S3 refused the credentials ({code})") from exc
                if code in _TRANSIENT_CODES or status >= 500 or status == 429:
                    raise TransientError(f"{code or status}") from exc
                raise Unavailable(f"{what}: S3 error {code} (HTTP {status})") from exc
            except (botocore.exceptions.EndpointConnectionError,
                    botocore.exceptions.ConnectionClosedError,
                    botocore.exceptions.ConnectTimeoutError,
                    botocore.exceptions.ReadTimeoutError,
                    botocore.exceptions.ResponseStreamingError,
                    botocore.exceptions.HTTPClientError) as exc:
                raise TransientError(str(exc)) from exc
            except botocore.exceptions.NoCredentialsError as exc:
                raise PermissionDenied(f"{what}: no S3 credentials configured") from exc

        return self.backoff.call(f"{what} ({self.describe()})", attempt)

    def _key(self, key: str) -> str:
        return self._prefix + check_key(key)

    def put(self, key: str, data: bytes | memoryview) -> None:
        """Put ``data``; a memoryview (a pack in the packer's reused buffer) is streamed
        from, not copied: botocore reads it to sign it and urllib3 to send it."""
        full = self._key(key)
        if len(data) <= self.config.multipart_threshold:
            self._call(f"put {key}", lambda: self._client.put_object(
                Bucket=self.config.bucket, Key=full, Body=_body(data)))
            return
        self._put_multipart(key, full, data)

    def _put_multipart(self, key: str, full: str, body: bytes | memoryview) -> None:
        bucket = self.config.bucket
        upload = self._call(f"start multipart {key}", lambda: self._client.create_multipart_upload(
            Bucket=bucket, Key=full))
        upload_id = upload["UploadId"]
        try:
            parts = []
            step = self.config.part_size
            for number, start in enumerate(range(0, len(body), step), start=1):
                piece = memoryview(body)[start : start + step]

                def send(n: int = number, p: memoryview = piece) -> Any:
                    return self._client.upload_part(Bucket=bucket, Key=full, UploadId=upload_id,
                                                    PartNumber=n, Body=_body(p))

                resp = self._call(f"put part {number} of {key}", send)
                parts.append({"PartNumber": number, "ETag": resp["ETag"]})
            self._call(f"complete multipart {key}", lambda: self._client.complete_multipart_upload(
                Bucket=bucket, Key=full, UploadId=upload_id, MultipartUpload={"Parts": parts}))
        except BaseException:
            # best effort: a bucket lifecycle rule cleans abandoned uploads
            with contextlib.suppress(botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError):
                self._client.abort_multipart_upload(Bucket=bucket, Key=full, UploadId=upload_id)
            raise

    def get(self, key: str) -> bytes:
        full = self._key(key)

        def fetch() -> bytes:
            resp = self._client.get_object(Bucket=self.config.bucket, Key=full)
            data: bytes = resp["Body"].read()
            return data

        return self._call(f"get {key}", fetch)

    def _ranged_get(self, key: str, offset: int, length: int) -> Any:
        """One ranged GET's response, or None when the range starts past the object's end
        (nothing there: the store contract). Called inside :meth:`_call`'s retries."""
        check_range(offset, length)
        try:
            return self._client.get_object(Bucket=self.config.bucket, Key=self._key(key),
                                           Range=f"bytes={offset}-{offset + length - 1}")
        except botocore.exceptions.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "InvalidRange":
                return None
            raise

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        check_range(offset, length)

        def fetch() -> bytes:
            resp = self._ranged_get(key, offset, length)
            if resp is None:
                return b""
            data: bytes = resp["Body"].read()
            if not resp.get("ContentRange"):  # a server that ignored Range sent it all
                return data[offset : offset + length]
            return data[:length]

        return self._call(f"get {key} [{offset}+{length}]", fetch)

    def get_range_into(self, key: str, offset: int, buf: memoryview) -> int:
        """:meth:`get_range` of ``len(buf)`` bytes read straight into ``buf`` (the restore's
        reused buffers: no fresh allocation and copy of every 16 MiB body); the count read,
        fewer at the object's end."""
        length = len(buf)
        check_range(offset, length)

        def fetch() -> int:
            resp = self._ranged_get(key, offset, length)
            if resp is None:
                return 0
            body = resp["Body"]
            if not resp.get("ContentRange"):  # a server that ignored Range sent it all
                data = body.read()[offset : offset + length]
                buf[: len(data)] = data
                return len(data)
            return _read_body_into(body, buf, int(resp.get("ContentLength", length)))

        return self._call(f"get {key} [{offset}+{length}]", fetch)

    def exists(self, key: str) -> bool:
        full = self._key(key)
        try:
            self._call(f"head {key}", lambda: self._client.head_object(Bucket=self.config.bucket, Key=full))
        except NotFound:
            return False
        return True

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        token: str | None = None
        full_prefix = self._prefix + prefix
        while True:
            kwargs: dict[str, Any] = {"Bucket": self.config.bucket, "Prefix": full_prefix}
            if token:
                kwargs["ContinuationToken"] = token

            def page_of(kw: dict[str, Any] = kwargs) -> Any:
                return self._client.list_objects_v2(**kw)

            page = self._call(f"list {prefix}", page_of)
            for item in page.get("Contents", []):
                key = item["Key"][len(self._prefix):]
                yield ObjectInfo(key, int(item["Size"]), item["LastModified"].timestamp())
            if not page.get("IsTruncated"):
                return
            token = page.get("NextContinuationToken")

    def delete(self, key: str) -> None:
        full = self._key(key)
        with contextlib.suppress(NotFound):
            self._call(f"delete {key}",
                       lambda: self._client.delete_object(Bucket=self.config.bucket, Key=full))

    def create_bucket(self) -> None:
        """Create the bucket if missing (used by `target add --create-bucket` and tests)."""
        def make() -> None:
            try:
                self._client.create_bucket(Bucket=self.config.bucket)
            except botocore.exceptions.ClientError as exc:
                code = exc.response.get("Error", {}).get("Code", "")
                if code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                    raise
        self._call(f"create bucket {self.config.bucket}", make)
