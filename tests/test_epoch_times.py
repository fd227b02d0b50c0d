"""orchestrator/epoch_times.py: the GPU epoch-times file the plan's cost model can read (pure Python)."""

from __future__ import annotations

import json
import re
import sys

import pytest

from orchestrator.epoch_times import (
    DEFAULT_PATH,
    FORMAT,
    epoch_times_document,
    parse_epoch_times,
    read_epoch_times,
    write_epoch_times,
)


def _doc(**changes):
    doc = epoch_times_document(
        device="NVIDIA H200",
        device_type="cuda",
        measured="2026-12-02T10:00:00+00:00",
        batch_size=64,
        train_samples=50_000,
        test_samples=10_000,
        archs={"resnet18": {"train_s": 4.0, "eval_s": 0.5}, "mobilenetv3": {"train_s": 8.0, "eval_s": 1.0}},
        commit="abc",
    )
    doc.update(changes)
    return doc


def test_write_then_read_round_trip(tmp_path):
    path = str(tmp_path / "gpu_epoch_times.json")
    write_epoch_times(path, _doc())
    t = read_epoch_times(path)
    assert (t.device, t.device_type, t.batch_size, t.train_samples, t.test_samples) == (
        "NVIDIA H200",
        "cuda",
        64,
        50_000,
        10_000,
    )
    assert t.seconds_per_epoch == {"resnet18": 4.5, "mobilenetv3": 9.0}
    assert t.extra["commit"] == "abc"
    assert json.load(open(path))["format"] == FORMAT


def test_epoch_seconds_scale_train_and_eval_with_the_split():
    t = parse_epoch_times(_doc())
    # Fashion-MNIST: 60k train (x1.2 of 4.0 s) + 10k test (x1 of 0.5 s)
    assert t.epoch_seconds("resnet18", 60_000, 10_000) == pytest.approx(4.8 + 0.5)
    # a 4,000 / 2,000 subset
    assert t.epoch_seconds("mobilenetv3", 4_000, 2_000) == pytest.approx(8.0 * 0.08 + 1.0 * 0.2)
    assert t.epoch_seconds("vit_b16", 50_000, 10_000) is None


def test_measured_seconds_has_the_shape_estimate_costs_takes(monkeypatch):
    from orchestrator import schedule

    monkeypatch.setattr(schedule, "flop_cost", lambda config: 1e12)  # no model built: FLOPs are not the point

    t = parse_epoch_times(_doc())
    sizes = {"cifar10": (50_000, 10_000), "fashion_mnist": (60_000, 10_000)}
    measured = t.measured_seconds([("resnet18", "cifar10"), ("vit_b16", "cifar10"), ("mobilenetv3", "fashion_mnist")],
                                  sizes)  # fmt: skip
    assert measured == {("resnet18", "cifar10"): 4.5, ("mobilenetv3", "fashion_mnist"): pytest.approx(10.6)}
    with pytest.raises(ValueError, match="no split sizes"):
        t.measured_seconds([("resnet18", "imagenet")], sizes)

    class Spec:  # what estimate_costs reads of a TrialSpec
        def __init__(self, tid, arch, dataset):
            self.trial_id, self.arch, self.dataset = tid, arch, dataset
            self.config = {"arch": arch, "dataset": dataset, "epochs": 10, "train_limit": None, "test_limit": None}

    trials = [Spec("a", "resnet18", "cifar10"), Spec("b", "mobilenetv3", "fashion_mnist")]
    est = schedule.estimate_costs(trials, measured)
    assert est.unit == "s" and est.costs == {"a": pytest.approx(45.0), "b": pytest.approx(106.0)}


def test_missing_file_is_none_and_the_default_path_is_in_benchmarks(tmp_path):
    assert read_epoch_times(str(tmp_path / "absent.json")) is None
    assert DEFAULT_PATH.endswith("benchmarks/gpu_epoch_times.json")


@pytest.mark.parametrize(
    "change,message",
    [
        ({"format": "other/1"}, "format="),
        ({"device": ""}, "device="),
        ({"batch_size": 0}, "batch_size"),
        ({"batch_size": 64.5}, "positive integer"),
        ({"train_samples": True}, "train_samples"),
        ({"archs": {}}, "at least one arch"),
        ({"archs": {"resnet18": {"train_s": 1.0}}}, "train_s and eval_s"),
        ({"archs": {"resnet18": {"train_s": float("nan"), "eval_s": 1.0}}}, "finite"),
        ({"archs": {"resnet18": {"train_s": -1.0, "eval_s": 1.0}}}, "positive"),
    ],
)
def test_bad_documents_are_refused_with_the_field_named(tmp_path, change, message):
    doc = {**_doc(), **change}
    with pytest.raises(ValueError, match=message):
        parse_epoch_times(doc)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match=re.escape(str(path))):
        read_epoch_times(str(path))
    with pytest.raises(ValueError):
        write_epoch_times(str(tmp_path / "never.json"), doc)
    assert not (tmp_path / "never.json").exists()


def test_not_json_is_refused(tmp_path):
    path = tmp_path / "x.json"
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not JSON"):
        read_epoch_times(str(path))


@pytest.mark.slow
def test_the_reader_imports_no_torch():
    import subprocess

    code = "import sys, orchestrator.epoch_times; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
