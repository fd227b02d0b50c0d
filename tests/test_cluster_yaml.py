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
