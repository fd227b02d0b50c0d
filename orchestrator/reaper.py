"""A watchdog that cleans up after a driver however it ends, SIGKILL included.

A driver that starts a local Ray owns a tree of processes (GCS, raylet, dashboard and runtime-env agents,
trial workers) and a temporary folder its trials write checkpoints into before Tune copies them.
A driver killed with SIGKILL runs no code, and Ray's agents then outlive it. So the driver starts this
reaper first, in a session of its own: while the driver lives, the reaper notes its descendants (pid
and start time, read from /proc every POLL_S); once it is gone, the reaper stops those still alive
(SIGTERM, then SIGKILL after GRACE_S), removes the temporary folder and exits. After a clean exit there
is nothing left to stop. Linux only (/proc); elsewhere the reaper is not started.

    python -m orchestrator.reaper --driver PID --temp-dir DIR
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time

POLL_S = 0.5
GRACE_S = 3.0


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, start time in clock ticks) of a live process, from /proc; None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read().decode(errors="replace")
    except OSError:
        return None
    fields = data[data.rindex(")") + 2 :].split()  # after "pid (comm) "; comm may hold spaces
    return int(fields[1]), int(fields[19])


def descendants(root: int) -> dict[int, int]:
    """pid -> start time of every live descendant of `root`."""
    children: dict[int, list[int]] = {}
    starts: dict[int, int] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            info = _stat(int(name))
            if info is not None:
                children.setdefault(info[0], []).append(int(name))
                starts[int(name)] = info[1]
    out: dict[int, int] = {}
    todo = list(children.get(root, []))
    while todo:
        pid = todo.pop()
        if pid not in out and pid in starts:
            out[pid] = starts[pid]
            todo.extend(children.get(pid, []))
    return out


def _alive(pid: int, start: int) -> bool:
    info = _stat(pid)
    return info is not None and info[1] == start  # the same process, not a reused pid


def stop(processes: dict[int, int]) -> list[int]:
    """SIGTERM the still-alive `processes` (pid -> start time), SIGKILL those left after GRACE_S; returns
    the pids signalled."""
    live = {pid: start for pid, start in processes.items() if _alive(pid, start)}
    for pid in live:
        try:
            os.kill(pid, signal.SIGTERM)
        except OSError:
            pass
    deadline = time.monotonic() + GRACE_S
    while time.monotonic() < deadline and any(_alive(p, s) for p, s in live.items()):
        time.sleep(0.1)
    for pid, start in live.items():
        if _alive(pid, start):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
    return sorted(live)


def watch(driver: int, temp_dir: str | None) -> None:
    """Note `driver`'s descendants until it is gone, then stop them and remove `temp_dir`."""
    start = _stat(driver)
    seen: dict[int, int] = {}
    while start is not None and _alive(driver, start[1]):
        seen.update(descendants(driver))
        seen.pop(os.getpid(), None)  # the reaper is the driver's child too
        time.sleep(POLL_S)
    stop(seen)
    if temp_dir:
        shutil.rmtree(temp_dir, ignore_errors=True)


def start_reaper(temp_dir: str | None) -> subprocess.Popen | None:
    """Start the reaper of this process (module docstring); None where /proc does not exist."""
    if not os.path.isdir("/proc"):
        return None
    cmd = [sys.executable, "-m", "orchestrator.reaper", "--driver", str(os.getpid())]
    if temp_dir:
        cmd += ["--temp-dir", temp_dir]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
    return subprocess.Popen(
        cmd, start_new_session=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env=env,
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """The reaper's command line."""
    p = argparse.ArgumentParser(prog="python -m orchestrator.reaper")
    p.add_argument("--driver", type=int, required=True)
    p.add_argument("--temp-dir")
    args = p.parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C meant for the driver's terminal is not ours
    watch(args.driver, args.temp_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
