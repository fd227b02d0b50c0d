"""The Grafana dashboard: valid dashboard JSON whose queries use only the gauges the trainable exports."""

from __future__ import annotations

import json
import os
import re

from orchestrator.study_gauges import METRICS as STUDY_METRICS
from orchestrator.study_gauges import STUDY_GAUGE_TAGS
from trainables.ray_trainable import GAUGE_TAGS, TrialGauges

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DASHBOARD = os.path.join(ROOT, "orchestrator", "dashboards", "deba_trials.json")
PROMQL_WORDS = {"count", "sum", "avg", "max", "or", "vector", "unless", "on", "group_left", "label_values", "by",
                "last_over_time"}  # fmt: skip
GRAFANA_BUILTINS = {"__range", "__interval", "__rate_interval"}


def _queries(dash: dict) -> list[str]:
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    exprs += [v["query"]["query"] for v in dash["templating"]["list"] if v["type"] == "query"]
    return exprs


def test_dashboard_is_grafana_dashboard_json():
    dash = json.load(open(DASHBOARD))
    assert {"title", "uid", "schemaVersion", "panels", "templating", "time"} <= set(dash)
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for p in dash["panels"]:
        assert p["type"] in {"stat", "timeseries", "bargauge"} and p["title"]
        assert {"x", "y", "w", "h"} <= set(p["gridPos"]) and p["gridPos"]["x"] + p["gridPos"]["w"] <= 24
        assert p["datasource"]["uid"] == "${datasource}" and p["targets"]
        assert all(t["refId"] and t["expr"] for t in p["targets"])
    names = {v["name"] for v in dash["templating"]["list"]}
    used = {m for e in _queries(dash) for m in re.findall(r"\$(\w+)", e)}
    assert used <= names | GRAFANA_BUILTINS, used - names
    assert {"study", "arch", "method"} <= names


def test_every_query_names_an_exported_gauge_and_its_tags():
    dash = json.load(open(DASHBOARD))
    exported = {f"ray_deba_trial_{name}" for name in TrialGauges.METRICS}
    exported |= {f"ray_deba_study_{name}" for name in STUDY_METRICS}
    seen = set()
    for expr in _queries(dash):
        without_selectors = re.sub(r"\{[^}]*\}", "", expr)
        words = set(re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", without_selectors)) - PROMQL_WORDS
        metrics = {w for w in words if w.startswith("ray_")}
        assert metrics and metrics <= exported, (expr, metrics - exported)
        seen |= metrics
        tags = GAUGE_TAGS if any(m.startswith("ray_deba_trial_") for m in metrics) else STUDY_GAUGE_TAGS
        for label in re.findall(r"(\w+)=~", expr):
            assert label in tags or label == "SessionName", (label, expr)
        for labels in re.findall(r"(?:on|by) \(?([\w, ]+)\)", expr.replace("on(", "on (")):
            assert {x.strip() for x in labels.split(",")} <= set(tags), (labels, expr)
        # Per-trial series join on the study too: the same trial_id may exist in two studies.
        for joined in re.findall(r"on \(([\w, ]+)\)", expr.replace("on(", "on (")):
            assert {x.strip() for x in joined.split(",")} == {"study", "trial_id"}, expr
    # Progress and the finished signal are what let finished trials drop out.
    assert {
        "ray_deba_trial_finished",
        "ray_deba_trial_epoch",
        "ray_deba_trial_epochs_total",
        "ray_deba_trial_batch_size",
        "ray_deba_trial_test_acc",
    } <= seen
    # The study-level panels: every state the driver counts, and epochs done of the total.
    assert {f"ray_deba_study_{name}" for name in STUDY_METRICS if name != "trials_total"} <= seen
