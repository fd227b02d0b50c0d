"""One driver per study: a lock file in the study's folder that names its owner.

`<results>/<study>/_driver.lock` holds {"owner": "host:pid", "token", "started", "heartbeat",
"command"}. A second driver on the same study is refused with the owner named.

On a local filesystem (or an NFS mount with locking) the lock is an exclusive `flock` on that
file: the kernel drops it when the driver's process ends, however it ends, so a lock is never
stale and never taken from a live driver that is merely slow. The file itself stays (emptied on
release): removing it would let a driver that opened the old file and one that creates a new one
both hold "the" lock.

Object stores (s3://, gs://) have no lock primitive: there the file carries a heartbeat, renewed
every `HEARTBEAT_S`, and a lock without one for `STALE_AFTER_S` is taken over. A driver that finds
its remote lock taken over calls `on_lost` (run_grid: a graceful stop).

- **s3://** (with boto3 installed, `pip install deba-orchestrator[s3]`): every write of the lock is a
  conditional PutObject, so the store itself decides races: the lock is created only if absent
  (`If-None-Match: *`), a stale lock is taken over, and a heartbeat renewed, only if it is still the
  version that was read (`If-Match: <ETag>`). Of two drivers racing, exactly one gets the lock; a
  driver whose heartbeat finds another version stops. This needs a store that honours conditional
  writes: AWS S3 (since 2024), MinIO, moto. The endpoint and credentials come from the standard
  variables (AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ...), or from the URI's
  `endpoint_override`, `scheme` and `region` query parameters, as for pyarrow.
- **gs://**, and s3:// without boto3 or against a store that answers the conditional headers with
  "not implemented": best effort, since pyarrow cannot send preconditions. The lock is read, written,
  and read back after `SETTLE_S`; a driver holds it if its token is there. Two drivers can both pass
  only if one of them takes longer than `SETTLE_S` between reading the lock (finding it free) and
  writing it, i.e. longer than the other's wait and read-back; then both run until the earlier one's
  next heartbeat (at most `HEARTBEAT_S`) finds the other's token and stops it.
"""

from __future__ import annotations

import fcntl
import json
import os
import posixpath
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import pyarrow.fs as pafs

from orchestrator.store import ResultsStore

LOCK_FILE = "_driver.lock"
HEARTBEAT_S = 15.0
LOCAL_TRIES = 20  # flock attempts 50 ms apart before a local lock is refused
STALE_AFTER_S = 90.0
SETTLE_S = 1.0  # best-effort remote locks: the wait between writing the lock and reading it back


class StudyLocked(RuntimeError):
    """Another live driver runs this study."""


class StudyLock:
    """Take with `acquire()` (raises StudyLocked) and `release()`; also a context manager."""

    def __init__(self, results: str, study: str, on_lost: Callable[[], None] | None = None) -> None:
        store = ResultsStore(results, study)
        self.fs, self.dir = store.fs, store.study_path
        self.path = posixpath.join(self.dir, LOCK_FILE)
        self.local = isinstance(self.fs, pafs.LocalFileSystem)
        self.token = uuid.uuid4().hex
        self.on_lost = on_lost
        self.doc = {
            "owner": f"{socket.gethostname()}:{os.getpid()}",
            "token": self.token,
            "started": time.time(),
            "heartbeat": time.time(),
            "command": " ".join(sys.argv),
        }
        self._fd: int | None = None  # local: the open, flocked lock file
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # s3://: conditional writes through boto3 (module docstring); None: the best-effort protocol.
        self.conditional = ConditionalObject.for_lock(results, self.path) if not self.local else None
        self._etag: str | None = None  # the version of the lock object this driver wrote last

    # ------------------------------------------------------------------ reading
    def holder(self) -> dict[str, Any] | None:
        """The lock document of the live driver that holds the study, or None when none does."""
        if self.local:
            return self._local_holder()
        doc, age = self._read()
        if doc is None and age is None:
            return None
        if doc is None:  # unreadable or half written: held, unless the file itself is old
            return None if age > STALE_AFTER_S else {"owner": "unknown (lock file unreadable)"}
        return None if time.time() - float(doc.get("heartbeat", 0)) > STALE_AFTER_S else doc

    def _read(self) -> tuple[dict[str, Any] | None, float | None]:
        """(document or None when unreadable, age of the file in seconds); (None, None) when absent."""
        info = self.fs.get_file_info(self.path)
        if info.type != pafs.FileType.File:
            return None, None
        age = time.time() - info.mtime.timestamp() if info.mtime else 0.0
        try:
            with self.fs.open_input_stream(self.path) as f:
                doc = json.loads(f.read().decode())
            return (doc if isinstance(doc, dict) else None), age
        except (OSError, ValueError):
            return None, age

    def _local_holder(self) -> dict[str, Any] | None:
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            doc, _ = self._read()
            return doc or {"owner": "unknown (lock file unreadable)"}
        finally:
            os.close(fd)  # also drops the shared lock, if taken
        return None

    @staticmethod
    def describe(doc: dict[str, Any]) -> str:
        """One line naming the lock's owner."""
        if "started" not in doc:
            return f"driver {doc.get('owner')}"
        started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(float(doc["started"])))
        age = time.time() - float(doc.get("heartbeat", doc["started"]))
        beat = f", last heartbeat {age:.0f} s ago" if doc.get("remote") else ""
        return f"driver {doc.get('owner')} (started {started}{beat}, command: {doc.get('command', '?')})"

    # ------------------------------------------------------------------ taking it
    def acquire(self) -> StudyLock:
        """Take the lock or raise StudyLocked naming its holder."""
        self.fs.create_dir(self.dir, recursive=True)
        if self.local:
            self._acquire_local()
        else:
            self._acquire_remote()
        return self

    def _refuse(self, doc: dict[str, Any]) -> StudyLocked:
        stale = f" (a lock without a heartbeat for {STALE_AFTER_S:.0f} s is taken over)" if not self.local else ""
        return StudyLocked(
            f"study folder {self.dir} is in use by {self.describe(doc)}. Two drivers on one study would run "
            f"every trial twice: wait for it to finish or stop it{stale}."
        )

    def _acquire_local(self) -> None:
        fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
        for attempt in range(LOCAL_TRIES):
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if attempt + 1 < LOCAL_TRIES:  # a reader's `holder()` holds a shared lock for a moment
                    time.sleep(0.05)
                    continue
                os.close(fd)
                doc, _ = self._read()
                raise self._refuse(doc or {"owner": "unknown (lock file unreadable)"}) from None
            except OSError as exc:  # ENOLCK: a network filesystem mounted without locking
                os.close(fd)
                raise StudyLocked(
                    f"cannot lock {self.path} ({exc}); the results folder must be on a filesystem with file "
                    "locks (an NFS mount without `nolock`), or an s3:// / gs:// URI"
                ) from exc
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(self.doc).encode())
        os.fsync(fd)
        self._fd = fd

    def _acquire_remote(self) -> None:
        self.doc["remote"] = True
        if self.conditional is not None:
            try:
                self._acquire_conditional(self.conditional)
                return
            except ConditionsNotSupported as exc:
                print(f"study lock {self.path}: {exc}; using the best-effort lock", file=sys.stderr, flush=True)
                self.conditional = None
        for _ in range(2):
            held = self.holder()
            if held is not None:
                raise self._refuse(held)
            self._write_doc()
            time.sleep(SETTLE_S)  # another driver writing at the same moment: the last write wins
            doc, _ = self._read()
            if doc is not None and doc.get("token") == self.token:
                self._start_heartbeat()
                return
        raise StudyLocked(f"could not take the lock {self.path}: another driver keeps taking it")

    def _acquire_conditional(self, obj: ConditionalObject) -> None:
        """Create the lock object if absent, or replace a stale one if nobody changed it meanwhile."""
        for _ in range(5):
            etag = obj.create(self._body())
            if etag is not None:
                self._etag = etag
                self._start_heartbeat()
                return
            found = obj.read()
            if found is None:
                continue  # released between our create and our read: try again
            data, etag, age = found
            doc = _parse(data)
            if doc is None:  # unreadable or half written: held, unless the object itself is old
                if age <= STALE_AFTER_S:
                    raise self._refuse({"owner": "unknown (lock file unreadable)"})
            elif time.time() - float(doc.get("heartbeat", 0)) <= STALE_AFTER_S:
                raise self._refuse(doc)
            new = obj.replace(self._body(), etag)  # take the stale lock over, unless it changed
            if new is not None:
                self._etag = new
                self._start_heartbeat()
                return
        raise StudyLocked(f"could not take the lock {self.path}: other drivers keep changing it")

    def _body(self) -> bytes:
        return json.dumps(self.doc).encode()

    def _start_heartbeat(self) -> None:
        self._thread = threading.Thread(target=self._beat, name="study-lock-heartbeat", daemon=True)
        self._thread.start()

    def _write_doc(self) -> None:
        tmp = self.path + f".{self.token}.tmp"
        with self.fs.open_output_stream(tmp) as out:
            out.write(self._body())
        self.fs.move(tmp, self.path)

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            self.doc["heartbeat"] = time.time()
            if self.conditional is not None:
                try:
                    etag = self.conditional.replace(self._body(), self._etag)
                except Exception:  # a storage hiccup: the next beat tries again
                    continue
                if etag is not None:
                    self._etag = etag
                    continue
                doc = self.holder() or {"owner": "another driver (the lock changed or was removed)"}
                self._lost(doc)
                return
            doc, _ = self._read()
            if doc is not None and doc.get("token") != self.token:
                self._lost(doc)
                return
            try:
                self._write_doc()
            except OSError:
                pass  # a storage hiccup: the next beat tries again

    def _lost(self, doc: dict[str, Any]) -> None:
        """Another driver took the study over (ours looked dead to it): stop running it."""
        print(
            f"study lock {self.path} was taken over by {self.describe(doc)}; stopping this driver",
            file=sys.stderr,
            flush=True,
        )
        if self.on_lost is not None:
            self.on_lost()

    def release(self) -> None:
        """Give the lock up (and remove the file if it is still ours)."""
        if self._fd is not None:
            os.ftruncate(self._fd, 0)  # the file stays (module docstring); closing drops the lock
            os.close(self._fd)
            self._fd = None
            return
        self._stop.set()
        if self._thread is None:
            return
        self._thread.join(timeout=5)
        self._thread = None
        if self.conditional is not None:
            found = self.conditional.read()
            if found is not None and (_parse(found[0]) or {}).get("token") == self.token:
                try:
                    self.conditional.delete(found[1])  # only that version: never a lock taken over since
                except ConditionsNotSupported:
                    self.fs.delete_file(self.path)
            return
        doc, _ = self._read()
        if doc is not None and doc.get("token") == self.token:
            try:
                self.fs.delete_file(self.path)
            except OSError:
                pass

    def __enter__(self) -> StudyLock:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


def _parse(data: bytes) -> dict[str, Any] | None:
    try:
        doc = json.loads(data.decode())
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


class ConditionsNotSupported(RuntimeError):
    """The object store refused a conditional request as not implemented."""


class ConditionalObject:
    """One S3 object written only under a precondition (If-None-Match / If-Match on PutObject and
    DeleteObject), through boto3: pyarrow's S3 filesystem cannot send these headers."""

    def __init__(self, client: Any, bucket: str, key: str) -> None:
        self.client, self.bucket, self.key = client, bucket, key

    @classmethod
    def for_lock(cls, results: str, path: str) -> ConditionalObject | None:
        """The lock object of an s3:// store (`path`: bucket/key, as pyarrow resolved it), or None for
        other stores, or when boto3 is not installed (then the best-effort protocol is used)."""
        from urllib.parse import parse_qs, urlsplit

        uri = urlsplit(results)
        if uri.scheme != "s3":
            return None
        try:
            import boto3
            from botocore.config import Config
        except ImportError:
            print(
                f"study lock {path}: boto3 is not installed, so the lock on s3:// is best effort "
                "(pip install 'deba-orchestrator[s3]' for conditional writes)",
                file=sys.stderr,
                flush=True,
            )
            return None
        query = {k: v[-1] for k, v in parse_qs(uri.query).items()}
        endpoint = query.get("endpoint_override")
        if endpoint and "://" not in endpoint:
            endpoint = f"{query.get('scheme', 'https')}://{endpoint}"
        # Without an endpoint in the URI, botocore reads AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL itself,
        # as pyarrow does; a custom endpoint (MinIO, moto) is addressed path-style.
        custom = endpoint or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        config = Config(s3={"addressing_style": "path"}, retries={"max_attempts": 3}) if custom else None
        client = boto3.client("s3", endpoint_url=endpoint, region_name=query.get("region"), config=config)
        bucket, _, key = path.partition("/")
        return cls(client, bucket, key)

    def _call(self, method: str, **kwargs: Any) -> Any:
        """The request's response, or None when its precondition failed (or the object is absent)."""
        from botocore.exceptions import ClientError

        try:
            return getattr(self.client, method)(Bucket=self.bucket, Key=self.key, **kwargs)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in ("PreconditionFailed", "ConditionalRequestConflict", "NoSuchKey") or status in (404, 409, 412):
                return None
            if code == "NotImplemented" or status == 501:
                raise ConditionsNotSupported(f"the store does not implement conditional writes ({code})") from exc
            raise

    def create(self, body: bytes) -> str | None:
        """Write the object if it does not exist; its ETag, or None when it exists."""
        response = self._call("put_object", Body=body, IfNoneMatch="*")
        return None if response is None else response["ETag"]

    def replace(self, body: bytes, etag: str | None) -> str | None:
        """Overwrite the object if it is still version `etag`; the new ETag, or None when it changed."""
        response = self._call("put_object", Body=body, IfMatch=etag) if etag else None
        return None if response is None else response["ETag"]

    def read(self) -> tuple[bytes, str, float] | None:
        """(body, ETag, age in seconds) of the object, or None when it is absent."""
        response = self._call("get_object")
        if response is None:
            return None
        age = time.time() - response["LastModified"].timestamp()
        return response["Body"].read(), response["ETag"], age

    def delete(self, etag: str) -> bool:
        """Delete the object if it is still version `etag`; whether it was deleted."""
        return self._call("delete_object", IfMatch=etag) is not None
