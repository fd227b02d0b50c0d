"""The epoch loop on CPU: config validation, records, signals, resume, divergence, measurement hook,
method statistics (per-sample diversity, two-batch noise) and the lr actually used."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from trainables import loop as loop_mod
from trainables.config import DEFAULT_CONFIG, TrialConfig, validate_config
from trainables.grad_stats import grad_stats
from trainables.loop import RECORD_COLUMNS, TrialLoop
from trainables.measurements import MeasureContext
from trainables.policies import policy_options
from trainables.records import epoch_column_names

# threads=1: on a shared 2-core machine two torch threads contend with other processes and run
# ~10x slower; the fixture below restores the process-wide setting after each test.
SMALL = {"arch": "tiny_cnn", "dataset": "digits", "train_limit": 160, "test_limit": 50, "threads": 1}
# "either" rolls back on one symptom: on these tiny runs the batch size moves within a few epochs.
DEBA = {
    **SMALL,
    "method": "deba",
    "policy": {"thresholds": "universal", "cooldown": 1, "b0": 32, "b_min": 8, "decision_rule": "either"},
}
MLP = {**SMALL, "arch": "tiny_mlp"}
TIMING = {"epoch_time_s", "eval_time_s", "wall_time_s", "samples_per_s", "peak_mem_mb", "measure_time_s"}
TRAINING = ("train_loss", "train_acc", "test_loss", "test_acc", "grad_var", "grad_norm")


@pytest.fixture(autouse=True)
def restore_threads() -> Any:
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def run(config: dict[str, Any], epochs: int | None = None) -> TrialLoop:
    loop = TrialLoop(TrialConfig.coerce(config))
    for _ in range(epochs or config["epochs"]):
        loop.run_epoch()
    return loop


# ---------------------------------------------------------------- config
def test_validate_fills_defaults() -> None:
    cfg = validate_config({"arch": "tiny_cnn", "dataset": "digits"})
    assert cfg["lr"] == 0.01 and cfg["momentum"] == 0.9 and cfg["weight_decay"] == 5e-4
    assert cfg["method"] == "fixed" and cfg["variant"] == "baseline" and cfg["policy"] == policy_options("fixed")
    assert cfg["eval_batch_size"] == 1024 and cfg["device"] == "auto" and cfg["compile"] is False
    assert set(cfg) == set(DEFAULT_CONFIG) | {"arch", "dataset"}


@pytest.mark.parametrize(
    "patch, message",
    [
        ({"arch": "resnet19"}, "arch='resnet19' is not allowed; expected .*resnet18"),
        ({"dataset": "mnist"}, "dataset='mnist' is not allowed; expected .*'digits'"),
        ({"method": "sgdr"}, "method='sgdr' is not allowed; expected .*'deba'"),
        ({"lr": 0}, "lr=0 is not allowed; expected a finite number > 0"),
        ({"lr": float("nan")}, "lr=nan is not allowed"),
        ({"momentum": 1.0}, "momentum=1.0 is not allowed; expected .*< 1"),
        ({"epochs": 0}, "epochs=0 is not allowed; expected an integer >= 1"),
        ({"seed": True}, "seed=True is not allowed; expected an integer"),
        ({"train_limit": 2.5}, "train_limit=2.5 is not allowed"),
        ({"device": "tpu"}, "device='tpu' is not allowed; expected one of 'auto', 'cpu', 'cuda'"),
        ({"amp": "fp16"}, "amp='fp16' is not allowed; expected .*'bf16'"),
        ({"channels_last": 1}, "channels_last=1 is not allowed; expected one of 'auto', True, False"),
        (
            {"compile": "default"},
            "compile='default' is not allowed; expected one of False, True, 'reduce-overhead', 'max-autotune'",
        ),
        ({"compile": 1}, "compile=1 is not allowed"),
        ({"cudnn_benchmark": "on"}, "cudnn_benchmark='on' is not allowed; expected one of 'auto', True, False"),
        ({"policy": {"arch": "resnet18"}}, "policy=.* is not allowed; expected policy options without 'arch'"),
        ({"policy": {"cooldwn": 3}}, "unknown policy 'fixed' option.*'cooldwn'"),
        ({"lr_schedule": "cosine"}, "unknown config field.*'lr_schedule'"),
    ],
)
def test_validate_rejects(patch: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        validate_config({"arch": "tiny_cnn", "dataset": "digits", **patch})


def test_validate_requires_arch_and_dataset() -> None:
    with pytest.raises(ValueError, match="missing required config field.*'dataset'"):
        validate_config({"arch": "tiny_cnn"})


def test_cuda_requested_without_gpu() -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(ValueError, match="no CUDA device"):
        TrialLoop(TrialConfig.from_dict({**SMALL, "device": "cuda"}))


# ---------------------------------------------------------------- one epoch
def test_record_columns_and_values() -> None:
    loop = run({**SMALL, "epochs": 2, "policy": {"b0": 32}})
    assert loop.device_name == "cpu" and loop.status == "completed" and loop.done
    assert RECORD_COLUMNS == tuple(c for c in epoch_column_names() if c not in ("study", "trial_id"))
    rec = loop.history[-1]
    assert tuple(rec) == RECORD_COLUMNS
    assert (rec["arch"], rec["dataset"], rec["seed"], rec["method"], rec["variant"]) == (
        "tiny_cnn",
        "digits",
        0,
        "fixed",
        "baseline",
    )
    assert rec["epoch"] == 2 and rec["batch_size"] == 32 and rec["next_batch_size"] == 32
    assert rec["lr"] == 0.01 and rec["decision"] == "hold" and rec["in_cooldown"] is False
    # 160 samples at 32 per batch: 5 full steps; accuracy is a multiple of 1/160.
    assert rec["train_acc"] * 160 == pytest.approx(round(rec["train_acc"] * 160))
    assert rec["samples_per_s"] == pytest.approx(160 / rec["epoch_time_s"])
    assert rec["wall_time_s"] > loop.history[0]["wall_time_s"]
    assert rec["grad_diversity"] is None and rec["estimator"] is None and rec["measure_time_s"] is None
    assert loop.history[0]["loss_variation"] == 0.0  # dL_1 = 0 (SPEC §1)

    # Signals are the last step's gradient: still live on the model after the epoch.
    var, norm = grad_stats(loop.model.parameters())
    assert rec["grad_var"] == var and rec["grad_norm"] == norm

    # Evaluation: every test sample, model in eval mode, sample-weighted loss.
    loop.model.eval()
    with torch.no_grad():
        x, y = next(loop.test_loader.epoch(50, None, shuffle=False, drop_last=False))
        out = loop.model(x)
    assert rec["test_loss"] == pytest.approx(F.cross_entropy(out, y).item(), rel=1e-5)
    assert rec["test_acc"] == int((out.argmax(1) == y).sum()) / 50

    with pytest.raises(RuntimeError, match="already completed"):
        loop.run_epoch()


def test_train_loss_is_the_mean_of_step_losses(monkeypatch: pytest.MonkeyPatch) -> None:
    """Reproduce epoch 1 by hand from the same seeds and compare loss, accuracy and weights."""
    cfg = TrialConfig.from_dict({**SMALL, "epochs": 1, "policy": {"b0": 40}, "augment": False})
    loop = TrialLoop(cfg)
    ref = TrialLoop(cfg)  # same seed: same initial weights and generator
    assert all(torch.equal(a, b) for a, b in zip(loop.model.parameters(), ref.model.parameters()))
    rec = loop.run_epoch()
    opt = torch.optim.SGD(ref.model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    losses, correct = [], 0
    ref.model.train()
    for x, y in ref.train_loader.epoch(40, ref.generator, shuffle=True, drop_last=True):
        out = ref.model(x)
        loss = F.cross_entropy(out, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        correct += int((out.argmax(1) == y).sum())
    assert len(losses) == 4
    assert rec["train_loss"] == pytest.approx(np.mean(losses), rel=1e-12)
    assert rec["train_acc"] == correct / 160
    assert all(torch.equal(a, b) for a, b in zip(loop.model.parameters(), ref.model.parameters()))


def test_batch_larger_than_train_set_is_clamped() -> None:
    loop = run({**SMALL, "epochs": 1, "policy": {"b0": 500}})
    rec = loop.history[0]
    assert rec["batch_size"] == 160  # one full batch of all training samples
    assert rec["next_batch_size"] == 500  # the policy's own choice is recorded unchanged


def test_lr_scale_sets_the_epoch_lr() -> None:
    loop = TrialLoop(TrialConfig.from_dict({**SMALL, "epochs": 1, "lr": 0.05}))
    loop.policy.lr_scale = 2.0
    rec = loop.run_epoch()
    assert rec["lr"] == pytest.approx(0.1)
    assert loop.optimizer.param_groups[0]["lr"] == pytest.approx(0.1)


# ---------------------------------------------------------------- signal sources + measurement hook
class GradProbe:
    """Test measurement: copies every step's flattened gradient (numpy float64)."""

    instances: list[GradProbe] = []

    def __init__(self, ctx: MeasureContext) -> None:
        self.model = ctx.model
        self.flats: list[np.ndarray] = []
        GradProbe.instances.append(self)

    def on_step(self, step: int, x: torch.Tensor, y: torch.Tensor, loss: torch.Tensor) -> None:
        self.flats.append(np.concatenate([p.grad.double().numpy().ravel() for p in self.model.parameters()]))

    def result(self) -> dict[str, Any]:
        return {}


@pytest.mark.parametrize("source", ["last_step", "epoch_mean", "mixed"])
def test_signal_sources_match_numpy(source: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(loop_mod.MEASUREMENTS, "grad_probe", GradProbe)
    GradProbe.instances.clear()
    loop = TrialLoop(TrialConfig.from_dict({**SMALL, "epochs": 1, "policy": {"b0": 32, "signal_source": source}}))
    monkeypatch.setattr(loop.policy, "measurements", lambda epoch: frozenset({"grad_probe"}))
    rec = loop.run_epoch()
    flats = GradProbe.instances[0].flats
    assert len(flats) == 5
    last, mean = flats[-1], np.mean(flats, axis=0)
    # mixed: the variance of the epoch-mean gradient, the norm of the last step's (SPEC §1).
    g_var = last if source == "last_step" else mean
    g_norm = mean if source == "epoch_mean" else last
    assert rec["grad_var"] == pytest.approx(g_var.var(), rel=1e-6)
    assert rec["grad_norm"] == pytest.approx(np.linalg.norm(g_norm), rel=1e-6)
    assert rec["measure_time_s"] is not None and rec["measure_time_s"] >= 0.0


def test_unimplemented_measurement_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    loop = TrialLoop(TrialConfig.from_dict({**SMALL, "epochs": 1}))
    monkeypatch.setattr(loop.policy, "measurements", lambda epoch: frozenset({"hessian_trace"}))
    with pytest.raises(NotImplementedError, match="'fixed' requests measurement.*hessian_trace.*epoch 1"):
        loop.run_epoch()


# ---------------------------------------------------------------- method statistics
def test_per_sample_diversity_only_on_resize_epochs_and_training_unchanged() -> None:
    plain = run({**MLP, "epochs": 2, "policy": {"b0": 16}})
    dive = run({**MLP, "epochs": 2, "method": "divebatch", "policy": {"b0": 16, "resize_every": 2, "b_max": 128}})
    r1, r2 = dive.history
    assert (r1["estimator"], r1["measure_time_s"], r1["grad_diversity"], r1["noise_scale"]) == (None, None, None, None)
    assert r2["estimator"] == "per_sample" and r2["measure_time_s"] > 0.0
    # The per-sample pass neither consumes RNG nor changes the model: training is bit-identical.
    for a, b in zip(plain.history, dive.history):
        assert [a[k] for k in TRAINING] == [b[k] for k in TRAINING]
    # The policy saw n = 10 steps x 16 samples: noise_scale = n*Delta - 1, B = int(min(max(0.1 n Delta, 16), 128)).
    n_delta = 160 * r2["grad_diversity"]
    assert r2["noise_scale"] == pytest.approx(n_delta - 1)
    assert r2["next_batch_size"] == int(min(max(0.1 * n_delta, 16), 128))


def test_per_sample_on_batchnorm_model_is_the_eval_approximation() -> None:
    plain = run({**SMALL, "epochs": 1, "policy": {"b0": 32}})
    dive = run({**SMALL, "epochs": 1, "method": "divebatch", "policy": {"b0": 32, "resize_every": 1}})
    assert dive.history[0]["estimator"] == "per_sample_bn_eval"
    assert math.isfinite(dive.history[0]["grad_diversity"]) and dive.history[0]["grad_diversity"] > 0
    # BatchNorm in eval mode during the per-sample pass: running statistics untouched, training identical.
    assert [plain.history[0][k] for k in TRAINING] == [dive.history[0][k] for k in TRAINING]
    assert all(torch.equal(a, b) for a, b in zip(plain.model.state_dict().values(), dive.model.state_dict().values()))
    consistent = run(
        {
            **SMALL,
            "epochs": 1,
            "method": "divebatch",
            "policy": {"b0": 32, "resize_every": 1, "diversity_sum": "per_sample"},
        }
    )
    assert consistent.history[0]["estimator"] == "per_sample_bn_eval_consistent"
    assert [plain.history[0][k] for k in TRAINING] == [consistent.history[0][k] for k in TRAINING]


def test_two_batch_noise_scale_estimator_keeps_the_gradient() -> None:
    # crop_flip: on these 160 images DiveBatch then keeps B=16 after epoch 1, so both runs train alike.
    plain = run({**MLP, "epochs": 2, "augment": "crop_flip", "policy": {"b0": 16}})
    dive = run(
        {
            **MLP,
            "epochs": 2,
            "augment": "crop_flip",
            "method": "divebatch",
            "policy": {"b0": 16, "resize_every": 1, "estimator": "noise_scale", "b_max": 128},
        }
    )
    for a, b in zip(plain.history, dive.history):
        assert b["estimator"] == "noise_scale" and b["measure_time_s"] > 0.0
        # No BatchNorm: two accumulated micro-batch gradients equal the batch gradient up to rounding.
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-5)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4)
        # Recorded Delta = (1 + B_simple) / n with n = 160 samples.
        assert b["grad_diversity"] == pytest.approx((1 + b["noise_scale"]) / 160)
        assert b["next_batch_size"] == int(min(max(0.1 * (1 + b["noise_scale"]), b["batch_size"]), 128))


def test_gns_records_the_noise_scale_every_epoch() -> None:
    loop = run({**SMALL, "epochs": 3, "method": "gns", "policy": {"b0": 16, "b_min": 8, "cooldown": 1}})
    assert all(r["estimator"] == "noise_scale" and math.isfinite(r["noise_scale"]) for r in loop.history)
    for r in loop.history:  # cooldown 1: every epoch moves to the clamped EMA'd noise scale
        assert r["next_batch_size"] == min(max(math.floor(r["noise_scale"]), 8), 1024)


def test_lr_actually_used_is_recorded() -> None:
    ada = run(
        {**MLP, "epochs": 3, "method": "adabatch", "policy": {"b0": 16, "resize_every": 1, "lr_scaling": "linear"}}
    )
    assert [r["lr"] for r in ada.history] == pytest.approx([0.01, 0.02, 0.04])
    assert [r["lr_gain"] for r in ada.history] == [1.0, 2.0, 4.0]
    assert all(r["estimator"] is None and r["measure_time_s"] is None for r in ada.history)
    scaled = run(
        {**MLP, "epochs": 3, "method": "adabatch", "policy": {"b0": 16, "resize_every": 1, "lr_scaling": "adascale"}}
    )
    gains = [r["lr_gain"] for r in scaled.history]
    assert gains[0] == 1.0 and 1.0 < gains[1] <= 2.0 and 1.0 < gains[2] <= 4.0  # between 1 and s = B/b0
    assert [r["lr"] for r in scaled.history] == pytest.approx([0.01 * g for g in gains])
    assert all(r["estimator"] == "noise_scale" for r in scaled.history)


# ---------------------------------------------------------------- resume
@pytest.mark.parametrize(
    "method, policy",
    [
        ("divebatch", {"b0": 16, "resize_every": 2, "delta": 1.0}),
        ("divebatch", {"b0": 16, "resize_every": 2, "delta": 1.0, "estimator": "noise_scale", "lr_scaling": "linear"}),
        ("gns", {"b0": 16, "b_min": 8, "cooldown": 1}),
        ("adabatch", {"b0": 16, "resize_every": 1, "lr_scaling": "adascale"}),
        ("deba", {"thresholds": "universal", "cooldown": 1, "b0": 32, "b_min": 8, "lr_scaling": "sqrt"}),
    ],
)
def test_every_policy_resumes_with_the_same_records(tmp_path: Any, method: str, policy: dict[str, Any]) -> None:
    cfg = TrialConfig.from_dict({**SMALL, "epochs": 4, "method": method, "policy": policy})
    straight = run(cfg)
    first = run(cfg, epochs=2)
    first.save_checkpoint(tmp_path)
    torch.rand(10)  # the checkpoint must carry its own RNG state
    resumed = TrialLoop(cfg)
    resumed.load_checkpoint(tmp_path)
    while not resumed.done:
        resumed.run_epoch()
    for a, b in zip(straight.history, resumed.history, strict=True):
        assert {k: v for k, v in a.items() if k not in TIMING} == {k: v for k, v in b.items() if k not in TIMING}
    assert resumed.policy.state_dict() == straight.policy.state_dict()
    assert any(r["estimator"] is not None for r in resumed.history[2:]) or method == "deba"
    assert len({r["batch_size"] for r in straight.history} | {straight.history[-1]["next_batch_size"]}) > 1


@pytest.mark.parametrize("source", ["last_step", "epoch_mean", "mixed"])
def test_resume_gives_the_same_records(tmp_path: Any, source: str) -> None:
    cfg = TrialConfig.from_dict({**DEBA, "epochs": 4, "policy": {**DEBA["policy"], "signal_source": source}})
    straight = run(cfg)
    assert straight.status == "completed"
    sizes = [r["batch_size"] for r in straight.history]
    assert len(set(sizes)) > 1, f"the policy should change the batch size in this run: {sizes}"

    first = run(cfg, epochs=2)
    first.save_checkpoint(tmp_path)
    for _ in range(3):  # consume RNG in this process: the checkpoint must carry its own state
        torch.rand(10)
        np.random.rand()
    resumed = TrialLoop(cfg)
    resumed.load_checkpoint(tmp_path)
    assert resumed.epochs_done == 2 and resumed.status == "running"
    while not resumed.done:
        resumed.run_epoch()

    assert len(resumed.history) == 4
    for a, b in zip(straight.history, resumed.history):
        assert {k: v for k, v in a.items() if k not in TIMING} == {k: v for k, v in b.items() if k not in TIMING}
    assert resumed.history[-1]["wall_time_s"] > resumed.history[1]["wall_time_s"]
    assert all(
        torch.equal(a, b) for a, b in zip(straight.model.state_dict().values(), resumed.model.state_dict().values())
    )


def test_checkpoint_of_another_trial_is_refused(tmp_path: Any) -> None:
    run({**SMALL, "epochs": 1}).save_checkpoint(tmp_path)
    other = TrialLoop(TrialConfig.from_dict({**SMALL, "epochs": 1, "seed": 1}))
    with pytest.raises(ValueError, match="another trial: config field 'seed'"):
        other.load_checkpoint(tmp_path)


def test_resume_with_more_epochs_continues(tmp_path: Any) -> None:
    done = run({**SMALL, "epochs": 1})
    assert done.done
    done.save_checkpoint(tmp_path)
    more = TrialLoop(TrialConfig.from_dict({**SMALL, "epochs": 2}))
    more.load_checkpoint(tmp_path)
    assert more.status == "running"
    assert more.run_epoch()["epoch"] == 2 and more.status == "completed"


# ---------------------------------------------------------------- divergence
def test_divergence_ends_the_run() -> None:
    loop = TrialLoop(
        TrialConfig.from_dict(
            {
                "arch": "tiny_mlp",
                "dataset": "digits",
                "train_limit": 256,
                "test_limit": 64,
                "lr": 1e4,
                "epochs": 5,
                "threads": 1,
            }
        )
    )
    while not loop.done:
        loop.run_epoch()
    assert loop.status == "diverged"
    last = loop.history[-1]
    # lr = 1e4 blows the weights up: epoch 1 is still finite but huge, epoch 2 is NaN.
    assert loop.history[0]["train_loss"] > 1e6 and math.isfinite(loop.history[0]["train_loss"])
    assert last["epoch"] == 2 and not math.isfinite(last["train_loss"])
    assert last["decision"] == "hold" and last["next_batch_size"] == last["batch_size"] == 64
    assert math.isnan(last["confidence"])
    assert loop.policy.epoch == 1  # the policy never saw the non-finite epoch
    with pytest.raises(RuntimeError, match="already diverged"):
        loop.run_epoch()


def test_diverged_record_keeps_the_lr_gain_it_trained_with() -> None:
    loop = TrialLoop(
        TrialConfig.from_dict(
            {
                "arch": "tiny_mlp",
                "dataset": "digits",
                "train_limit": 256,
                "test_limit": 64,
                "lr": 1e3,
                "epochs": 5,
                "threads": 1,
                "method": "adabatch",
                "policy": {"b0": 32, "resize_every": 1, "lr_scaling": "linear"},
            }
        )
    )
    while not loop.done:
        loop.run_epoch()
    # Epoch 1 (B = 32) is finite but huge; epoch 2 trains at B = 64 with lr x 2 and is NaN.
    assert loop.status == "diverged" and len(loop.history) == 2
    last = loop.history[-1]
    assert last["batch_size"] == 64 and last["lr"] == 2e3 and last["lr_gain"] == 2.0


class PlainBackward:
    """Test measurement that replaces the backward with the same computation, counting its calls."""

    def __init__(self, ctx: MeasureContext) -> None:
        self.calls = 0

    def backward(self, loss_and_logits: Any, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.calls += 1
        loss, out = loss_and_logits(x, y)
        loss.backward()
        return loss.detach(), out.detach()

    def result(self) -> dict[str, Any]:
        return {}


def test_measurement_can_replace_the_backward(monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[PlainBackward] = []
    monkeypatch.setitem(loop_mod.MEASUREMENTS, "plain", lambda ctx: made.append(PlainBackward(ctx)) or made[-1])
    cfg = TrialConfig.from_dict({**SMALL, "epochs": 1, "policy": {"b0": 32}})
    plain = run(cfg)
    hooked = TrialLoop(cfg)
    monkeypatch.setattr(hooked.policy, "measurements", lambda epoch: frozenset({"plain"}))
    rec = hooked.run_epoch()
    assert made[0].calls == 5
    assert {k: v for k, v in rec.items() if k not in TIMING | {"measure_time_s"}} == {
        k: v for k, v in plain.history[0].items() if k not in TIMING | {"measure_time_s"}
    }

    monkeypatch.setitem(loop_mod.MEASUREMENTS, "plain2", PlainBackward)
    two = TrialLoop(cfg)
    monkeypatch.setattr(two.policy, "measurements", lambda epoch: frozenset({"plain", "plain2"}))
    with pytest.raises(ValueError, match="more than one replaces the backward"):
        two.run_epoch()


def test_cpu_runs_the_gpu_knobs() -> None:
    """bf16 autocast, channels_last and fused SGD (the CUDA defaults) also run on CPU."""
    loop = run({**SMALL, "epochs": 1, "amp": "bf16", "channels_last": True, "fused_sgd": True})
    rec = loop.history[0]
    assert loop.amp_dtype == torch.bfloat16 and loop.optimizer.defaults["fused"] is True
    conv = next(p for p in loop.model.parameters() if p.dim() == 4)
    assert conv.is_contiguous(memory_format=torch.channels_last)
    assert math.isfinite(rec["train_loss"]) and math.isfinite(rec["grad_norm"]) and rec["grad_norm"] > 0


@pytest.mark.parametrize(
    "mode, expected",
    [(True, {}), ("reduce-overhead", {"mode": "reduce-overhead"}), ("max-autotune", {"mode": "max-autotune"})],
)
def test_compile_modes_reach_torch_compile(
    mode: Any, expected: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Validation and the mode handed to torch.compile (not run: compiling is slow on this CPU)."""
    from orchestrator.studies import EXECUTION_KEYS

    assert {"compile", "cudnn_benchmark"} <= EXECUTION_KEYS  # speed knobs do not change trial ids
    calls: list[tuple[Any, dict[str, Any]]] = []
    monkeypatch.setattr(torch, "compile", lambda model, **kw: calls.append((model, kw)) or model)
    loop = TrialLoop(TrialConfig.from_dict({**SMALL, "compile": mode}))
    assert calls == [(loop.model, expected)]
    TrialLoop(TrialConfig.from_dict({**SMALL}))
    assert len(calls) == 1  # default False: no compile


@pytest.mark.parametrize("setting", ["auto", True, False])
def test_cudnn_benchmark_validates_and_leaves_cpu_alone(setting: Any) -> None:
    before = torch.backends.cudnn.benchmark
    loop = run({**SMALL, "epochs": 1, "cudnn_benchmark": setting})
    assert loop.cudnn_benchmark is (setting is True)  # auto = off until measured on a GPU
    assert torch.backends.cudnn.benchmark is before  # a CUDA-only setting: untouched on CPU
    assert math.isfinite(loop.history[0]["train_loss"])


# ---------------------------------------------------------------- CLI (trainables.run)
def test_cli_runs_resumes_and_writes_jsonl(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from trainables.run import main

    base = [
        "--arch",
        "tiny_cnn",
        "--dataset",
        "digits",
        "--method",
        "deba",
        "--train-limit",
        "96",
        "--test-limit",
        "30",
        "--threads",
        "1",
        "--threshold-source",
        "universal",
        "--batch-size",
        "32",
        "--checkpoint-dir",
        str(tmp_path / "ck"),
        "--out",
        str(tmp_path / "r.jsonl"),
    ]
    assert main(base + ["--epochs", "1"]) == 0
    out = capsys.readouterr().out
    assert "epoch   1/1  bs   32 -> 32" in out and "status completed after 1 epochs on cpu" in out
    assert main(base + ["--epochs", "2"]) == 0
    out = capsys.readouterr().out
    assert "resumed from" in out and "after epoch 1" in out and "epoch   2/2" in out
    rows = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2] and tuple(rows[0]) == RECORD_COLUMNS


def test_cli_speed_knobs() -> None:
    from trainables.run import build_parser, config_from_args

    base = ["--arch", "tiny_cnn", "--dataset", "digits"]
    cfg = config_from_args(build_parser().parse_args(base))
    assert cfg.compile is False and cfg.cudnn_benchmark == "auto"
    cfg = config_from_args(build_parser().parse_args(base + ["--compile", "--cudnn-benchmark", "on"]))
    assert cfg.compile is True and cfg.cudnn_benchmark is True
    cfg = config_from_args(build_parser().parse_args(base + ["--compile", "max-autotune"]))
    assert cfg.compile == "max-autotune"
    with pytest.raises(ValueError, match="compile='fast' is not allowed"):
        config_from_args(build_parser().parse_args(base + ["--compile", "fast"]))


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--arch", "tiny", "--dataset", "digits"], "arch='tiny' is not allowed"),
        (["--arch", "timm/resnet10t", "--dataset", "digits", "--method", "deba"], "no Table 1 thresholds"),
        (["--arch", "tiny_cnn", "--dataset", "digits", "--policy-opt", "b0"], "expected KEY=VALUE"),
        (["--arch", "tiny_cnn", "--dataset", "digits", "--lr", "-1"], "lr=-1.0 is not allowed"),
    ],
)
def test_cli_config_errors_exit_2(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    from trainables.run import main

    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err


def test_resume_keeps_this_loops_optimizer_settings(tmp_path: Any) -> None:
    """The optimizer's state_dict carries its param_groups' settings: a checkpoint must neither
    bring another trial's momentum / weight decay nor override this loop's fused setting."""
    run({**SMALL, "epochs": 1, "fused_sgd": False}).save_checkpoint(tmp_path)
    fused = TrialLoop(TrialConfig.from_dict({**SMALL, "epochs": 2, "fused_sgd": True}))
    fused.load_checkpoint(tmp_path)
    assert fused.optimizer.param_groups[0]["fused"] is True
    for field, value in (("momentum", 0.5), ("weight_decay", 0.0), ("lr", 0.1), ("augment", False)):
        with pytest.raises(ValueError, match=f"another trial: config field {field!r}"):
            TrialLoop(TrialConfig.from_dict({**SMALL, "epochs": 2, field: value})).load_checkpoint(tmp_path)


def test_record_epoch_mean_adds_the_other_signal_source_without_changing_training() -> None:
    plain = run({**SMALL, "epochs": 2})
    both = run({**SMALL, "epochs": 2, "record_epoch_mean": True})
    mean_source = run({**SMALL, "epochs": 2, "policy": {"signal_source": "epoch_mean"}})
    for a, b, c in zip(plain.history, both.history, mean_source.history, strict=True):
        assert [a[k] for k in TRAINING] == [b[k] for k in TRAINING]
        assert a["grad_var_epoch_mean"] is None and a["grad_norm_epoch_mean"] is None
        # The recorded epoch-mean statistics are those an epoch_mean policy sees.
        assert (b["grad_var_epoch_mean"], b["grad_norm_epoch_mean"]) == (c["grad_var"], c["grad_norm"])
        assert (c["grad_var_epoch_mean"], c["grad_norm_epoch_mean"]) == (c["grad_var"], c["grad_norm"])


@pytest.mark.parametrize(
    "dataset, given, expected",
    [
        ("digits", "auto", "crop"),
        ("cifar10", "auto", "crop_flip"),
        ("fashion_mnist", "auto", "crop_flip"),
        ("digits", True, "crop_flip"),
        ("cifar10", False, "none"),
        ("cifar100", "crop", "crop"),
    ],
)
def test_augmentation_defaults_per_dataset(dataset: str, given: Any, expected: str) -> None:
    cfg = validate_config({"arch": "tiny_cnn", "dataset": dataset, "augment": given})
    assert cfg["augment"] == expected
    with pytest.raises(ValueError, match="augment='flip' is not allowed"):
        validate_config({"arch": "tiny_cnn", "dataset": dataset, "augment": "flip"})
