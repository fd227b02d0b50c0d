"""No process and no temporary folder outlives a driver, whatever ends it; Ctrl-C at any moment exits 130
with one line (issue: clean stops and clean disks)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from orchestrator.reaper import _alive, descendants

pytestmark = pytest.mark.slow
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "PYTHONPATH": ROOT, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}


def _driver(results: str, epochs: int = 200) -> subprocess.Popen:
    cmd = [sys.executable, os.path.join(ROOT, "orchestrator", "run_grid.py"), "--study", "cs", "--archs", "tiny_mlp",
           "--seeds", "0", "--methods", "fixed", "--epochs", str(epochs), "--train-limit", "128", "--test-limit", "64",
           "--results", results, "--quiet", "--no-analysis"]  # fmt: skip
    return subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _reaper_temp_dir(driver: int) -> str:
    """The temporary folder the reaper of `driver` removes (from the reaper's command line)."""
    for name in os.listdir("/proc"):
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                args = f.read().decode(errors="replace").split("\0")
        except OSError:
            continue
        if "orchestrator.reaper" in args and args[args.index("--driver") + 1] == str(driver):
            return args[args.index("--temp-dir") + 1]
    raise AssertionError(f"no reaper watches driver {driver}")


def _wait_for(condition, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.5)
    return condition()


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="the reaper reads /proc (Linux)")
def test_sigkill_of_the_driver_leaves_no_process_and_no_temporary_folder(tmp_path):
    driver = _driver(str(tmp_path))
    epochs = tmp_path / "cs" / "epochs"
    assert _wait_for(lambda: epochs.is_dir() and any(epochs.iterdir()), 180), driver.communicate(timeout=5)
    tree = descendants(driver.pid)  # Ray's processes and the trial's worker
    temp_dir = _reaper_temp_dir(driver.pid)
    assert len(tree) >= 3 and os.path.isdir(temp_dir)
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait(timeout=10)
    assert _wait_for(lambda: not any(_alive(pid, start) for pid, start in tree.items()), 30), [
        pid for pid, start in tree.items() if _alive(pid, start)
    ]
    assert _wait_for(lambda: not os.path.exists(temp_dir), 10)


def test_ctrl_c_while_ray_starts_exits_130_with_one_line(tmp_path):
    driver = _driver(str(tmp_path), epochs=2)
    time.sleep(4)  # planning is done, Ray is starting (or the first trial began)
    driver.send_signal(signal.SIGINT)
    out, err = driver.communicate(timeout=120)
    assert driver.returncode == 130, (out, err)
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("run_grid:"), err
