"""Every query of the Grafana dashboard returns series from a real Prometheus that scrapes a local study.

Prometheus (Debian's package: `apt-get install prometheus`; .ci/run installs it) runs on a loopback
port and scrapes the local Ray's /metrics every second while a two-trial study runs in this process
(the driver). Each PromQL query of the dashboard, with Grafana's variables filled in, is sent to
Prometheus's HTTP API: every one returns series at some moment while the study runs, and after it ends
the study-level panels still do, with the final counts (the per-trial panels show running trials only).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import threading
import time
import urllib.parse
import urllib.request

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

pytestmark = pytest.mark.slow
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DASHBOARD = os.path.join(ROOT, "orchestrator", "dashboards", "deba_trials.json")
PROMETHEUS = shutil.which("prometheus")
STUDY = "promcheck"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read().decode())


def _queries() -> dict[str, str]:
    """Panel title (and refId) -> PromQL with Grafana's variables filled in; variable queries as
    `label_values(metric, label)`."""
    dash = json.load(open(DASHBOARD))
    fill = {"$study": STUDY, "$__range": "15m"}
    out = {}
    for p in dash["panels"]:
        for t in p["targets"]:
            expr = t["expr"]
            for var, value in fill.items():
                expr = expr.replace(var, value)
            out[f"{p['title']} [{t['refId']}]"] = re.sub(r"\$\w+", ".*", expr)
    for v in dash["templating"]["list"]:
        if v["type"] == "query":
            out[f"variable {v['name']}"] = v["query"]["query"]
    return out


class Prometheus:
    """A Prometheus process on a loopback port that scrapes `target` every second."""

    def __init__(self, target: str, folder: str) -> None:
        self.port = _free_port()
        config = os.path.join(folder, "prometheus.yml")
        with open(config, "w") as f:
            f.write(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
                f"scrape_configs:\n  - job_name: ray\n    static_configs:\n      - targets: ['{target}']\n"
            )
        self.log = open(os.path.join(folder, "prometheus.log"), "w")
        self.proc = subprocess.Popen(
            [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={os.path.join(folder, 'tsdb')}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=self.log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        deadline = time.time() + 30
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=1)
                return
            except OSError:
                if time.time() > deadline or self.proc.poll() is not None:
                    raise RuntimeError(f"prometheus did not start; see {self.log.name}") from None
                time.sleep(0.3)

    def series(self, query: str) -> list[dict]:
        """The series a dashboard query returns now (instant query, or a label_values lookup)."""
        base = f"http://127.0.0.1:{self.port}/api/v1"
        match = re.fullmatch(r"label_values\((\w+), (\w+)\)", query)
        if match:
            metric, label = match.groups()
            doc = _get(f"{base}/label/{label}/values?" + urllib.parse.urlencode({"match[]": metric}))
            return [{"value": v} for v in doc["data"]]
        doc = _get(f"{base}/query?" + urllib.parse.urlencode({"query": query}))
        assert doc["status"] == "success", (query, doc)
        return doc["data"]["result"]

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)
        self.log.close()


@pytest.mark.skipif(PROMETHEUS is None, reason="no prometheus binary: apt-get install prometheus (.ci/run does)")
def test_every_dashboard_query_returns_series_during_and_after_a_study(tmp_path):
    import ray

    from orchestrator.runner import make_plan, run_plan
    from orchestrator.studies import StudySpec
    from orchestrator.study_gauges import METRICS_REPORT_INTERVAL_MS

    metrics_port = _free_port()
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        runtime_env={"env_vars": {"PYTHONPATH": ROOT}},
        _metrics_export_port=metrics_port,
        _system_config={"metrics_report_interval_ms": METRICS_REPORT_INTERVAL_MS},  # as run_grid's local Ray
    )
    prom = None
    try:
        prom = Prometheus(f"127.0.0.1:{metrics_port}", str(tmp_path))
        # Trials long enough (~5 s each on an idle 2-core machine) to export their per-epoch gauges over several
        # report intervals while they train: dashboards drop finished trials.
        study = StudySpec(
            name=STUDY, archs=("tiny_cnn",), datasets=("digits",), seeds=(0,), methods=("fixed", "deba"), epochs=16,
            loop={"train_limit": 1024, "test_limit": 256, "threads": 1}, policy={"cooldown": 1, "window": 3},
            thresholds={"tiny_cnn": {"theta_stab": 0.3, "theta_conf": 1.1}}, gpus_per_trial=0.0, max_failures=0,
        )  # fmt: skip
        results = str(tmp_path / "results")
        plan = make_plan(study, results)
        runner = threading.Thread(target=run_plan, args=(plan, results, {"cpu": 1.0, "gpu": 0.0}),
                                  kwargs={"echo": False, "verbose": 0})  # fmt: skip
        queries = _queries()
        seen: set[str] = set()
        runner.start()
        while runner.is_alive():  # while the study runs
            seen |= {name for name, q in queries.items() if name not in seen and prom.series(q)}
            time.sleep(0.5)
        runner.join()
        assert not set(queries) - seen, f"no series while the study ran: {sorted(set(queries) - seen)}"

        # After the study: the driver's gauges hold the final state (2 finished, nothing running).
        study_panels = {n: q for n, q in queries.items() if "ray_deba_study_" in q or n.startswith("variable study")}
        deadline = time.time() + 4 * METRICS_REPORT_INTERVAL_MS / 1000 + 5
        while True:
            finished = prom.series(queries["Trials finished [A]"])
            running = prom.series(queries["Trials running [A]"])
            if finished and float(finished[0]["value"][1]) == 2 and running and float(running[0]["value"][1]) == 0:
                break
            assert time.time() < deadline, (finished, running)
            time.sleep(0.5)
        empty = [n for n, q in study_panels.items() if not prom.series(q)]
        assert not empty, f"study panels without series after the study: {empty}"
        done = prom.series(queries["Epochs done [A]"])
        assert float(done[0]["value"][1]) == pytest.approx(1.0)  # 16 of 16 epochs
    finally:
        if prom is not None:
            prom.stop()
        ray.shutdown()
