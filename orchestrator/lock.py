"""One driver per study: a lock file in the study's folder, with its owner and a heartbeat.

`<results>/<study>/_driver.lock` holds {"owner": "host:pid", "token", "started", "heartbeat",
"command"}. A second driver on the same study is refused with the owner named; a lock whose
heartbeat is older than `STALE_AFTER_S` (its driver was killed, or its machine died), or whose
owner is a dead process of this host, is taken over. On a local filesystem the lock is created
atomically (O_EXCL); object stores (s3://, gs://) have no such primitive, so there the lock is
written and read back after a short wait: two drivers started within that moment can both pass.
"""

from __future__ import annotations

import json
import os
import posixpath
import socket
import sys
import threading
import time
import uuid
from typing import Any

import pyarrow.fs as pafs

from orchestrator.store import ResultsStore

LOCK_FILE = "_driver.lock"
HEARTBEAT_S = 15.0
STALE_AFTER_S = 90.0


class StudyLocked(RuntimeError):
    """Another live driver runs this study."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class StudyLock:
    """Take with `acquire()` (raises StudyLocked), keep fresh with a heartbeat thread, `release()`."""

    def __init__(self, results: str, study: str) -> None:
        store = ResultsStore(results, study)
        self.fs, self.dir = store.fs, store.study_path
        self.path = posixpath.join(self.dir, LOCK_FILE)
        self.local = isinstance(self.fs, pafs.LocalFileSystem)
        self.token = uuid.uuid4().hex
        self.doc = {
            "owner": f"{socket.gethostname()}:{os.getpid()}",
            "token": self.token,
            "started": time.time(),
            "heartbeat": time.time(),
            "command": " ".join(sys.argv),
        }
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ reading
    def holder(self) -> dict[str, Any] | None:
        """The current lock document, or None when the study is not locked (or the lock is unreadable)."""
        try:
            with self.fs.open_input_stream(self.path) as f:
                return json.loads(f.read().decode())
        except (OSError, ValueError):
            return None

    def stale(self, doc: dict[str, Any]) -> bool:
        """Whether a lock document belongs to a driver that is gone."""
        age = time.time() - float(doc.get("heartbeat", 0))
        host, _, pid = str(doc.get("owner", "")).rpartition(":")
        if host == socket.gethostname() and pid.isdigit() and not _pid_alive(int(pid)):
            return True
        return age > STALE_AFTER_S

    def describe(self, doc: dict[str, Any]) -> str:
        """One line naming the lock's owner."""
        age = time.time() - float(doc.get("heartbeat", 0))
        started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(float(doc.get("started", 0))))
        return (
            f"driver {doc.get('owner')} (started {started}, last heartbeat {age:.0f} s ago, "
            f"command: {doc.get('command', '?')})"
        )

    # ------------------------------------------------------------------ taking it
    def acquire(self) -> StudyLock:
        """Take the lock or raise StudyLocked naming its holder; a stale lock is taken over."""
        self.fs.create_dir(self.dir, recursive=True)
        for _ in range(2):
            if self._create():
                self._start_heartbeat()
                return self
            doc = self.holder()
            if doc is None or self.stale(doc):
                self._remove()
                continue
            raise StudyLocked(
                f"study folder {self.dir} is in use by {self.describe(doc)}. Two drivers on one "
                "study would run every trial twice: wait for it to finish or stop it (a lock "
                f"without a heartbeat for {STALE_AFTER_S:.0f} s is taken over)."
            )
        raise StudyLocked(f"could not take the lock {self.path}: another driver keeps taking it")

    def _create(self) -> bool:
        data = json.dumps(self.doc).encode()
        if self.local:
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            return True
        if self.holder() is not None:
            return False
        with self.fs.open_output_stream(self.path) as out:
            out.write(data)
        time.sleep(1.0)  # another driver writing at the same moment: the last write wins
        doc = self.holder()
        return doc is not None and doc.get("token") == self.token

    def _remove(self) -> None:
        try:
            self.fs.delete_file(self.path)
        except OSError:
            pass

    def _start_heartbeat(self) -> None:
        self._thread = threading.Thread(target=self._beat, name="study-lock-heartbeat", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            doc = self.holder()
            if doc is not None and doc.get("token") != self.token:
                return  # taken over by another driver (ours looked dead): stop touching it
            self.doc["heartbeat"] = time.time()
            tmp = self.path + f".{self.token}.tmp"
            try:
                with self.fs.open_output_stream(tmp) as out:
                    out.write(json.dumps(self.doc).encode())
                self.fs.move(tmp, self.path)
            except OSError:
                pass  # a storage hiccup: the next beat tries again

    def release(self) -> None:
        """Stop the heartbeat and remove the lock if it is still ours."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        doc = self.holder()
        if doc is not None and doc.get("token") == self.token:
            self._remove()

    def __enter__(self) -> StudyLock:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()
