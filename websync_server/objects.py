"""The block store on S3-compatible object storage: one object per block, shared by any number of server processes.

``--blocks s3://BUCKET[/PREFIX]`` puts the blocks of user U at
``PREFIX/U/HASH``.  The endpoint, region and credentials come from the standard
AWS variables and files (``AWS_ENDPOINT_URL``, ``AWS_REGION``,
``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``~/.aws/config``), read by
boto3; nothing here signs a request itself.

The same surface as the folder store (blocks.py), with these differences:

- **Durable before acknowledged** comes from the object store: a PUT that
  answered 200 is stored.  The body is checked against its hash before it is
  sent, so an object under a hash's name always holds those bytes.
- **Ranges** are ranged GETs: only the bytes asked for cross the network.  The
  server does not rehash a block before serving part of it (that would fetch it
  whole); it relies on its own check at upload and on the store's integrity.
- **Which of these exist** (`missing`, `sizes`) walks the bucket's sorted
  listing beside the sorted hashes: one LIST answers up to 1,000 neighbouring
  keys, so a batch costs at most one request per 1,000 blocks the user has,
  and never one request per block asked about.
- **No refresh**: an object's time can't be touched without copying it, so a
  block reported present is not made young again.  If the collector frees an
  unnamed block between a client's question and its commit, the commit is
  refused ("upload it first") and the client uploads it again (gc.py).

Errors of the object store become `BlockStorageUnavailable` (503): the
client retries later, as for any server that can't reach its storage.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from ._exceptions import BlockStorageUnavailable, InvalidRequest, NotFound, RangeNotSatisfiable
from .blocks import Extent, StoredBlock, check_block, check_user
from .protocol import BlockHash, is_block_hash

__all__ = ["ObjectBlockStore", "is_object_url"]

log = logging.getLogger(__name__)

_SCHEME = "s3://"
_LIST_PAGE = 1000  # the most keys one ListObjectsV2 answers (S3's limit)


def is_object_url(where: str) -> bool:
    """Whether a ``--blocks`` value names object storage rather than a folder."""
    return where.startswith(_SCHEME)


class ObjectBlockStore:
    """Users' blocks as objects in one bucket (under an optional prefix)."""

    def __init__(self, url: str, client: Any = None) -> None:
        bucket, _, prefix = url[len(_SCHEME):].partition("/")
        if not bucket:
            raise InvalidRequest(f"{url!r} names no bucket (s3://BUCKET or s3://BUCKET/PREFIX)")
        self.url = url
        self.bucket = bucket
        self._prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self._client = client
        self._client_lock = threading.Lock()

    @property
    def client(self) -> Any:
        """The boto3 S3 client, made on first use (boto3 is a slow import)."""
        with self._client_lock:
            if self._client is None:
                import boto3
                from botocore.config import Config

                # Commits and reads run on up to 40 worker threads, each may hold one connection.
                config = Config(max_pool_connections=64, retries={"mode": "standard", "max_attempts": 4})
                self._client = boto3.client("s3", config=config)
            return self._client

    def open(self) -> None:
        """Check that the bucket is there and reachable (nothing is left over by a crash: PUTs are whole)."""
        with _translated(f"the bucket {self.bucket}"):
            self.client.head_bucket(Bucket=self.bucket)

    def key(self, user: str, block: BlockHash) -> str:
        """The object key of a block (whether or not it is there)."""
        check_user(user)
        if not is_block_hash(block):
            raise InvalidRequest(f"{block!r} is not a block hash (64 lower-case hex digits)")
        return f"{self._prefix}{user}/{block}"

    def put(self, user: str, block: BlockHash, data: bytes | Sequence[bytes]) -> bool:
        """Store *data* as *block*; True if it is new.  Same checks and errors as `BlockStore.put`."""
        key = self.key(user, block)
        body = data if isinstance(data, bytes) else b"".join(data)  # one block: at most 4 MiB
        check_block(block, [body])
        if self.size(user, block) is not None:
            return False
        with _translated(f"block {block}"):
            self.client.put_object(Bucket=self.bucket, Key=key, Body=body)
        return True

    def put_many(self, user: str, blocks: Sequence[tuple[BlockHash, bytes]]) -> int:
        """`put` of each block in turn (an object is durable once its PUT answers); how many were new.

        Every block is checked first: one that is wrong refuses the request and nothing is stored.
        """
        for block, data in blocks:
            self.key(user, block)
            check_block(block, [data])
        return sum(self.put(user, block, data) for block, data in blocks)

    def read(self, user: str, block: BlockHash, first: int | None = None, last: int | None = None) -> Extent:
        """A block, or an inclusive byte range of it, as one (ranged) GET; errors as `BlockStore.read`."""
        key = self.key(user, block)
        if first is None and last is None:
            answer = self._get(key, block)
            data = answer["Body"].read()
            return Extent(data, 0, len(data))
        wanted = f"bytes={'' if first is None else first}-{'' if last is None else last}"
        answer = self._get(key, block, Range=wanted)
        data = answer["Body"].read()
        start, size = _content_range(answer.get("ContentRange"), len(data))
        return Extent(data, start, size)

    def read_small(self, user: str, block: BlockHash, first: int | None, last: int | None) -> Extent | None:
        """Always None: every read is a network request, so it runs on a worker thread (`read`)."""
        return None

    def size(self, user: str, block: BlockHash) -> int | None:
        """The size of a block, or None when the bucket lacks it."""
        return self.sizes(user, [block]).get(block)

    def sizes(self, user: str, blocks: Iterable[BlockHash]) -> dict[BlockHash, int]:
        """The sizes of those of *blocks* that are there (see the module docstring for the cost)."""
        wanted = sorted({self.key(user, b) for b in blocks})
        found: dict[BlockHash, int] = {}
        index = 0
        while index < len(wanted):
            # List from just before the first unanswered key: the page covers it and its neighbours.
            page = self._list(f"{self._prefix}{user}/", start_after=_before(wanted[index]))
            keys = {item["Key"]: item["Size"] for item in page}
            last_key = page[-1]["Key"] if page else None
            while index < len(wanted) and (len(page) < _LIST_PAGE or (last_key and wanted[index] <= last_key)):
                if wanted[index] in keys:
                    found[BlockHash(wanted[index].rsplit("/", 1)[1])] = keys[wanted[index]]
                index += 1
        return found

    def missing(self, user: str, blocks: Iterable[BlockHash]) -> list[BlockHash]:
        """Those of *blocks* the bucket lacks, each once, in the order given."""
        blocks = list(dict.fromkeys(blocks))
        present = self.sizes(user, blocks)
        return [b for b in blocks if b not in present]

    def files(self, user: str) -> Iterator[StoredBlock]:
        """Every block of *user* with its size and time (for the collector)."""
        after = ""
        while True:
            page = self._list(f"{self._prefix}{user}/", start_after=after)
            for item in page:
                name = item["Key"].rsplit("/", 1)[1]
                if is_block_hash(name):
                    yield StoredBlock(BlockHash(name), item["Size"], int(item["LastModified"].timestamp() * 1e9))
            if len(page) < _LIST_PAGE:
                return
            after = page[-1]["Key"]

    def remove(self, user: str, block: BlockHash, older_than_ns: int) -> bool:
        """Delete a block unless it is gone or newer than *older_than_ns*; True if deleted."""
        key = self.key(user, block)
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=key)
        except Exception as exc:  # noqa: BLE001 - translated below
            if _status(exc) == 404:
                return False
            raise BlockStorageUnavailable(f"can't reach the block storage for block {block}: {exc}") from exc
        if int(head["LastModified"].timestamp() * 1e9) >= older_than_ns:
            return False  # uploaded again since the listing
        with _translated(f"block {block}"):
            self.client.delete_object(Bucket=self.bucket, Key=key)
        return True

    def _get(self, key: str, block: BlockHash, **options: str) -> Any:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=key, **options)
        except Exception as exc:  # noqa: BLE001 - botocore's errors are translated here, once
            status = _status(exc)
            if status == 404:
                raise NotFound(f"there is no block {block}") from None
            if status == 416:
                size = self.size(key.rsplit("/", 2)[-2], block) or 0
                raise RangeNotSatisfiable(f"the range is outside the {size} byte block", size) from None
            raise BlockStorageUnavailable(f"can't read block {block} from the block storage: {exc}") from exc

    def _list(self, prefix: str, start_after: str) -> list[dict[str, Any]]:
        with _translated(f"the blocks under {prefix}"):
            options = {"StartAfter": start_after} if start_after else {}
            answer = self.client.list_objects_v2(Bucket=self.bucket, Prefix=prefix, MaxKeys=_LIST_PAGE, **options)
        return list(answer.get("Contents", ()))


class _translated:
    """Turn any error of the object store's client into `BlockStorageUnavailable`."""

    def __init__(self, what: str) -> None:
        self._what = what

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, _tb: object) -> None:
        if exc is None or isinstance(exc, (InvalidRequest, NotFound)):
            return
        if isinstance(exc, Exception):
            raise BlockStorageUnavailable(f"can't reach the block storage for {self._what}: {exc}") from exc


def _status(exc: BaseException) -> int | None:
    """The HTTP status of a botocore ClientError, None for anything else."""
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return None
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return int(status) if status is not None else None


def _before(key: str) -> str:
    """A key sorting before *key* and after every shorter-or-equal key below it (ListObjectsV2 starts after it).

    Keys here are all PREFIX/USER/ and 64 hex digits, so lowering the last digit is enough.
    """
    return key[:-1] + chr(ord(key[-1]) - 1)


def _content_range(header: str | None, length: int) -> tuple[int, int]:
    """(start, whole size) of a ``Content-Range: bytes START-END/SIZE`` answer."""
    if not header or not header.startswith("bytes "):
        return 0, length
    span, _, size = header[len("bytes "):].partition("/")
    return int(span.partition("-")[0]), int(size)
