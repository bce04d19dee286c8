"""Local paths and s3:// URIs behind one small API (pyarrow filesystems).

The S3 endpoint and credentials come from the standard AWS variables (`AWS_ENDPOINT_URL`,
`AWS_ACCESS_KEY_ID`, ...), so the same code runs against AWS, MinIO or a local moto_server.
Every write is atomic: a local file is written beside its target and renamed; an S3 object is sent
in one PUT from memory, so a failure never leaves a partial object.
"""
from __future__ import annotations

import os
import posixpath
import uuid
from contextlib import contextmanager
from functools import lru_cache
from urllib.parse import urlparse

import pyarrow.fs as pafs


class StorageError(RuntimeError):
    """A URI that cannot be reached or read; the message names it."""


class StorageUnavailable(StorageError):
    """The store did not answer (after the S3 client's retries), or an output cannot be written: a
    fault of the infrastructure, never a verdict on the item, so batch jobs stop instead of
    recording the item as bad."""


# S3 calls retry with exponential backoff (50 ms, 100 ms, ... 12.8 s): 10 attempts ride out an
# endpoint that is gone for ~25 s, then fail with StorageUnavailable.
S3_MAX_ATTEMPTS = int(os.environ.get("DEEPLAB_S3_MAX_ATTEMPTS", "10"))


def is_s3(uri: str) -> bool:
    return str(uri).startswith("s3://")


@lru_cache(maxsize=8)
def _s3(endpoint: str | None, region: str) -> pafs.S3FileSystem:
    options = dict(region=region, connect_timeout=5, request_timeout=30,
                   retry_strategy=pafs.AwsDefaultS3RetryStrategy(max_attempts=S3_MAX_ATTEMPTS))
    if endpoint:
        parsed = urlparse(endpoint)
        options.update(endpoint_override=parsed.netloc or parsed.path, scheme=parsed.scheme or "https")
    return pafs.S3FileSystem(**options)


def resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    """URI -> (filesystem, path on it)."""
    uri = str(uri)
    if is_s3(uri):
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
        fs = _s3(os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL"), region)
        return fs, uri[len("s3://"):].rstrip("/")
    return pafs.LocalFileSystem(), os.path.abspath(uri)


def absolute(uri: str) -> str:
    """Local paths made absolute (Ray workers run in other directories); s3:// unchanged."""
    return str(uri) if is_s3(uri) else os.path.abspath(uri)


def join(uri: str, *parts: str) -> str:
    uri = str(uri)
    return posixpath.join(uri, *parts) if is_s3(uri) else os.path.join(uri, *parts)


def exists(uri: str) -> bool:
    fs, path = resolve(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def read_bytes(uri: str) -> bytes:
    fs, path = resolve(uri)
    try:
        with fs.open_input_stream(path) as f:
            return f.read()
    except FileNotFoundError:
        raise StorageError(f"{uri}: not found") from None
    except OSError as e:  # remote: the store did not answer; local: this file is unreadable
        if is_s3(uri):
            raise unavailable(uri, "cannot read", e) from None
        raise StorageError(f"{uri}: {e}") from None


def unavailable(uri: str, what: str, error: OSError) -> StorageUnavailable:
    return StorageUnavailable(f"{uri}: {what}: {str(error).splitlines()[0][:300]}")


@contextmanager
def reading(uri: str):
    """Around code that reads through a filesystem of `resolve()` itself (pyarrow raises OSError):
    an S3 store that does not answer becomes StorageUnavailable naming `uri`; missing files and
    local errors stay as they are, for the caller to judge."""
    try:
        yield
    except FileNotFoundError:
        raise
    except OSError as e:
        if not is_s3(uri):
            raise
        raise unavailable(uri, "cannot read", e) from None


def check_writable(uri: str) -> None:
    """Fail before any work when an output location cannot take writes: an S3 bucket that does not
    exist or an endpoint that does not answer; a local path whose nearest existing parent is not a
    writable directory. Creates nothing."""
    fs, path = resolve(uri)
    if not is_s3(uri):
        parent = path
        while not os.path.exists(parent):
            parent = os.path.dirname(parent)
        if not (os.path.isdir(parent) and os.access(parent, os.W_OK)):
            raise StorageError(f"{uri}: cannot write there ({parent} is not a writable directory)")
        return
    bucket = path.split("/", 1)[0]
    try:
        missing = fs.get_file_info(bucket).type == pafs.FileType.NotFound
    except OSError as e:
        raise unavailable(uri, "cannot reach the bucket", e) from None
    if missing:
        raise StorageError(f"{uri}: bucket {bucket!r} does not exist")


def write_bytes(uri: str, data: bytes) -> None:
    """Write atomically: readers see the old content or the whole new content, never a part."""
    fs, path = resolve(uri)
    if is_s3(uri):
        try:
            fs.create_dir(posixpath.dirname(path), recursive=True)
            with fs.open_output_stream(path) as f:
                f.write(data)
        except OSError as e:
            raise unavailable(uri, "cannot write", e) from None
        return
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError as e:  # a full or read-only disk: the output, not the item
        raise unavailable(uri, "cannot write", e) from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def create_exclusive(uri: str, data: bytes) -> bool:
    """Create the file, content and all, only if nothing is there (S3: a PUT with `If-None-Match: *`;
    local: a hard link of a written temp file): True when this call created it, False when it existed."""
    if is_s3(uri):
        import boto3
        from botocore.exceptions import ClientError, EndpointConnectionError

        bucket, _, key = uri[len("s3://"):].partition("/")
        try:
            boto3.client("s3").put_object(Bucket=bucket, Key=key, Body=data, IfNoneMatch="*")
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("PreconditionFailed", "ConditionalRequestConflict"):
                return False
            raise unavailable(uri, "cannot write", OSError(str(e))) from None
        except EndpointConnectionError as e:
            raise unavailable(uri, "cannot write", OSError(str(e))) from None
        return True
    _, path = resolve(uri)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    with open(tmp, "wb") as f:
        f.write(data)
    try:  # a hard link is created whole or not at all, and never over an existing file
        os.link(tmp, path)
    except FileExistsError:
        return False
    finally:
        os.remove(tmp)
    return True


def delete(uri: str) -> None:
    """Delete a file or a whole directory/prefix; missing is fine."""
    fs, path = resolve(uri)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.Directory:
        fs.delete_dir(path)
    elif info.type == pafs.FileType.File:
        fs.delete_file(path)


def move(src: str, dst: str) -> None:
    """Rename locally; copy then delete on S3 (each object still appears whole)."""
    fs, src_path = resolve(src)
    _, dst_path = resolve(dst)
    if not is_s3(dst):
        os.makedirs(os.path.dirname(dst_path), exist_ok=True)
    fs.move(src_path, dst_path)


def list_dirs(uri: str) -> list[str]:
    """The immediate sub-directories of a directory/prefix, as URIs."""
    fs, path = resolve(uri)
    if fs.get_file_info(path).type != pafs.FileType.Directory:
        return []
    prefix = "s3://" if is_s3(uri) else ""
    return sorted(prefix + i.path for i in fs.get_file_info(pafs.FileSelector(path))
                  if i.type == pafs.FileType.Directory)


def list_file_infos(uri: str, suffixes: tuple[str, ...] = ()) -> list[pafs.FileInfo]:
    """Every file below a directory/prefix, recursively, sorted by path; `.path` is a URI, with
    `.size` and `.mtime` (S3: LastModified)."""
    fs, path = resolve(uri)
    if fs.get_file_info(path).type != pafs.FileType.Directory:
        return []
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True))
    prefix = "s3://" if is_s3(uri) else ""
    return sorted((pafs.FileInfo(prefix + i.path, i.type, size=i.size, mtime=i.mtime) for i in infos
                   if i.type == pafs.FileType.File and (not suffixes or i.path.lower().endswith(suffixes))),
                  key=lambda i: i.path)


def list_files(uri: str, suffixes: tuple[str, ...] = ()) -> list[str]:
    """Every file below a directory/prefix, recursively, as URIs, sorted."""
    return [i.path for i in list_file_infos(uri, suffixes)]
