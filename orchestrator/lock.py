"""One driver per study: a lock file in the study's folder that names its owner.

`<results>/<study>/_driver.lock` holds {"owner": "host:pid", "token", "started", "heartbeat",
"command"}. A second driver on the same study is refused with the owner named.

On a local filesystem (or an NFS mount with locking) the lock is an exclusive `flock` on that
file: the kernel drops it when the driver's process ends, however it ends, so a lock is never
stale and never taken from a live driver that is merely slow. The file itself stays (emptied on
release): removing it would let a driver that opened the old file and one that creates a new one
both hold "the" lock. Object stores (s3://, gs://) have no lock primitive: there
the file carries a heartbeat, renewed every `HEARTBEAT_S`, and a lock without one for
`STALE_AFTER_S` is taken over; the lock is written and read back after a short wait, so two drivers
started within that moment can both pass (best effort). A driver that finds its remote lock taken
over calls `on_lost` (run_grid: a graceful stop).
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
        for _ in range(2):
            held = self.holder()
            if held is not None:
                raise self._refuse(held)
            self._write_doc()
            time.sleep(1.0)  # another driver writing at the same moment: the last write wins
            doc, _ = self._read()
            if doc is not None and doc.get("token") == self.token:
                self._thread = threading.Thread(target=self._beat, name="study-lock-heartbeat", daemon=True)
                self._thread.start()
                return
        raise StudyLocked(f"could not take the lock {self.path}: another driver keeps taking it")

    def _write_doc(self) -> None:
        tmp = self.path + f".{self.token}.tmp"
        with self.fs.open_output_stream(tmp) as out:
            out.write(json.dumps(self.doc).encode())
        self.fs.move(tmp, self.path)

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            doc, _ = self._read()
            if doc is not None and doc.get("token") != self.token:
                # Another driver took the study over (ours looked dead to it): stop running it.
                print(
                    f"study lock {self.path} was taken over by {self.describe(doc)}; stopping this driver",
                    file=sys.stderr,
                    flush=True,
                )
                if self.on_lost is not None:
                    self.on_lost()
                return
            self.doc["heartbeat"] = time.time()
            try:
                self._write_doc()
            except OSError:
                pass  # a storage hiccup: the next beat tries again

    def release(self) -> None:
        """Give the lock up (and remove the file if it is still ours)."""
        if self._fd is not None:
            os.ftruncate(self._fd, 0)  # the file stays (module docstring); closing drops the lock
            os.close(self._fd)
            self._fd = None
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
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
