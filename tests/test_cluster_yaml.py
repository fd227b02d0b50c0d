"""cluster.yaml passes Ray's own cluster-launcher schema, before and after Ray fills its defaults."""

from __future__ import annotations

import copy
import os

import pytest
import yaml

pytest.importorskip("jsonschema")
from ray.autoscaler._private.util import prepare_config, validate_config  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def cluster() -> dict:
    with open(os.path.join(ROOT, "cluster.yaml")) as f:
        return yaml.safe_load(f)


def test_cluster_yaml_passes_ray_schema(cluster):
    validate_config(cluster)
    # What `ray up` validates: the config merged with the provider's defaults.
    validate_config(prepare_config(copy.deepcopy(cluster)))


def test_cluster_yaml_has_cpu_head_and_gpu_workers(cluster):
    types = cluster["available_node_types"]
    head = types[cluster["head_node_type"]]
    assert head["resources"] == {"CPU": 0}  # trials never land on the head
    workers = [t for name, t in types.items() if name != cluster["head_node_type"]]
    assert len(workers) == 1
    assert workers[0]["min_workers"] == 0 and workers[0]["max_workers"] == 8
    assert workers[0]["node_config"]["InstanceType"] == "p5.48xlarge"
    assert cluster["docker"]["image"].startswith("rayproject/ray:2.60.0")
    assert any("pip install" in c and "~/deba" in c for c in cluster["setup_commands"])
    assert cluster["file_mounts"]["~/deba"] == "."


def test_cluster_yaml_runs_every_node_with_token_authentication(cluster):
    # Every container (ray start, the job driver, trials) sees token mode; every node gets the token.
    assert "-e RAY_AUTH_MODE=token" in cluster["docker"]["run_options"]
    assert cluster["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"


def test_schema_check_is_real(cluster):
    broken = copy.deepcopy(cluster)
    broken["available_node_types"]["worker.gpu"]["min_workerz"] = 1
    with pytest.raises(Exception, match="min_workerz"):
        validate_config(broken)
    over = copy.deepcopy(cluster)
    over["available_node_types"]["worker.gpu"]["min_workers"] = 9  # more than max_workers: 8
    with pytest.raises(ValueError, match="max_workers"):
        validate_config(over)


def _submit_line(text: str) -> str:
    """The `ray job submit ... -- python orchestrator/run_grid.py ...` command in `text`, on one line."""
    lines = [line.lstrip("# ").rstrip() for line in text.splitlines()]
    start = next(i for i, line in enumerate(lines) if line.startswith("RAY_AUTH_MODE=token ray job submit"))
    command, i = lines[start], start
    while command.endswith("\\"):
        i += 1
        command = command[:-1].rstrip() + " " + lines[i].strip()
    return command


def test_cluster_yaml_submit_line_is_the_readmes():
    header = open(os.path.join(ROOT, "cluster.yaml")).read().split("cluster_name:")[0]
    readme = open(os.path.join(ROOT, "README.md")).read()
    ours = _submit_line(header)
    assert ours == _submit_line(readme)
    # GPU workers start only when trials ask for GPUs: the line must ask.
    assert "--gpus-per-trial 1" in ours and "--study paper" in ours


def test_gpu_workers_have_an_instance_profile_for_s3_results(cluster):
    worker = cluster["available_node_types"]["worker.gpu"]["node_config"]
    # Ray's AWS provider creates ray-autoscaler-v1 (with S3 access) for the head only.
    assert worker["IamInstanceProfile"] == {"Name": "ray-autoscaler-v1"}
    assert any("metrics_report_interval_ms" in c for c in cluster["head_start_ray_commands"])
