"""Any timm model as an architecture: input choices at 32x32, training, planning, refusals."""

from __future__ import annotations

import pytest
import torch

from orchestrator.run_grid import main as grid_main
from trainables.config import TrialConfig, identity_view
from trainables.loop import TrialLoop
from trainables.models import build_model, model_flops_per_sample
from trainables.run import main as trial_main
from trainables.timm_archs import parse_input, resolve_input

CNN, VIT = "timm/convnext_atto", "timm/vit_tiny_patch16_224"


def test_input_choices_follow_timm_not_guesses():
    assert resolve_input(CNN, 10) == "native"  # ConvNeXt takes no img_size: its stem runs at 32x32
    assert resolve_input(VIT, 10) == "img_size=32,patch_size=4"  # 8x8 patches instead of 2x2
    assert resolve_input("timm/resnet10t", 10, "resize=64") == "resize=64"
    assert parse_input("img_size=32,patch_size=4") == {"img_size": 32, "patch_size": 4}
    with pytest.raises(ValueError, match="timm_input='img_size=32,patch=4' is not allowed"):
        parse_input("img_size=32,patch=4")


@pytest.mark.slow
@pytest.mark.parametrize("arch", [CNN, VIT])
@pytest.mark.parametrize("classes", [10, 100])
def test_a_cnn_and_a_transformer_build_at_32_and_train_one_step(arch, classes):
    torch.manual_seed(0)
    model = build_model(arch, classes).to(memory_format=torch.channels_last)
    x = torch.randn(4, 3, 32, 32).to(memory_format=torch.channels_last)
    y = torch.randint(0, classes, (4,))
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    before = [p.detach().clone() for p in model.parameters()]
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    assert model(x).shape == (4, classes) and torch.isfinite(loss)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert model_flops_per_sample(arch, classes) > 0


def test_a_timm_trial_runs_through_the_loop_with_the_gpu_path_settings():
    cfg = TrialConfig(
        arch="timm/resnet10t",
        dataset="synthetic",
        train_limit=32,
        test_limit=16,
        epochs=1,
        policy={"b0": 16},
        threads=1,
    )
    assert cfg.timm_input == "native"  # recorded: part of the trial's identity
    loop = TrialLoop(cfg)
    rec = loop.run_epoch()
    assert loop.channels_last and loop.train_loader.channels_last
    conv = next(p for p in loop.model.parameters() if p.dim() == 4)
    assert conv.is_contiguous(memory_format=torch.channels_last)
    assert rec["epoch"] == 1 and rec["batch_size"] == 16 and torch.isfinite(torch.tensor(rec["train_loss"]))
    other = cfg.replace(timm_input="resize=64")
    assert other.trial_id() != cfg.trial_id()


def test_registry_archs_keep_their_trial_ids_and_refuse_a_timm_input():
    cfg = TrialConfig(arch="resnet18", dataset="cifar10", method="deba")
    assert cfg.timm_input is None
    assert "timm_input" not in identity_view(cfg.to_dict())  # so its id is the one it had before timm_input existed
    with pytest.raises(ValueError, match="timm_input='native' is not allowed; expected null for the registry arch"):
        TrialConfig(arch="resnet18", dataset="cifar10", timm_input="native")


def test_run_grid_plans_a_timm_arch_and_refuses_an_unknown_one(tmp_path, capsys):
    assert (
        grid_main(["--archs", CNN, "--dry-run", "--results", str(tmp_path), "--methods", "fixed", "--seeds", "0"]) == 0
    )
    out = capsys.readouterr().out
    assert f"{CNN} at 32x32 (timm_input=native)" in out and "timm/convnext_atto-digits-s0-fixed-baseline" in out
    assert grid_main(["--archs", "timm/convnext_atoo", "--dry-run", "--results", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "close timm names: timm/convnext_atto" in err
    assert trial_main(["--arch", "timm/resnet_10t", "--dataset", "digits", "--epochs", "1"]) == 2
    assert "close timm names" in capsys.readouterr().err


def test_deba_on_a_timm_arch_needs_thresholds_and_says_where_they_come_from(tmp_path, capsys):
    assert grid_main(["--archs", CNN, "--methods", "deba", "--dry-run", "--results", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "has no Table 1 thresholds" in err and "--thresholds" in err and "--policy-opt" in err
