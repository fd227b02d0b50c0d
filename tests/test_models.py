"""Tests of the architecture registry (trainables/models.py)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from trainables.models import ARCHITECTURES, build_model, model_flops_per_sample

STUDY_ARCHS = ("resnet18", "resnet50", "densenet121", "efficientnet_b0", "mobilenetv3", "vit_b16")

# Parameter counts derived by hand from torchvision's published ImageNet totals:
# total = imagenet_total - (F*1000 + 1000) + (F*C + C) - stem_change, where F is the head's
# input width, C the number of classes, and stem_change = 3*64*(7*7 - 3*3) for the archs whose
# 7x7 stem becomes 3x3 (EfficientNet/MobileNet only change a stride: no parameter change).
IMAGENET = {  # arch: (torchvision ImageNet parameter count, head input width, 7x7 -> 3x3 stem)
    "resnet18": (11_689_512, 512, True),
    "resnet50": (25_557_032, 2048, True),
    "densenet121": (7_978_856, 1024, True),
    "efficientnet_b0": (5_288_548, 1280, False),
    "mobilenetv3": (5_483_032, 1280, False),
    "vit_b16": (86_567_656, 768, False),
}


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def expected_params(arch: str, num_classes: int) -> int:
    total, width, stem = IMAGENET[arch]
    total += -(width * 1000 + 1000) + (width * num_classes + num_classes)
    return total - (3 * 64 * (49 - 9) if stem else 0)


def test_registry_keys_and_specs():
    assert set(ARCHITECTURES) == set(STUDY_ARCHS) | {"tiny_cnn", "tiny_mlp"}
    for name, spec in ARCHITECTURES.items():
        assert spec.name == name
        assert spec.input_adaptation.endswith(".") and len(spec.input_adaptation) > 20
    assert "224" in ARCHITECTURES["vit_b16"].input_adaptation


# The big ones take seconds to build on a CPU: end-to-end tier.
HEAVY = {"vit_b16", "resnet50", "densenet121"}


@pytest.mark.parametrize(
    "arch",
    [pytest.param(a, marks=pytest.mark.slow) if a in HEAVY else a for a in STUDY_ARCHS + ("tiny_cnn", "tiny_mlp")],
)
def test_builds_and_outputs_logits(arch):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32)
    for num_classes in (10, 100):
        model = build_model(arch, num_classes)
        seen = {}
        if arch == "vit_b16":  # the 32x32 input reaches the standard ViT-B/16 as 224x224
            # (hooks must return None, or they replace the module's input)
            model.model.register_forward_pre_hook(lambda m, args, seen=seen: seen.update(shape=args[0].shape))
        with torch.no_grad():
            out = model(x)  # train mode: BatchNorm uses batch statistics of 2 images
        if arch == "vit_b16":
            assert seen["shape"] == (2, 3, 224, 224)
        assert out.shape == (2, num_classes)
        assert out.dtype == torch.float32
        assert torch.isfinite(out).all()
        if arch in IMAGENET:
            assert n_params(model) == expected_params(arch, num_classes)


def test_known_cifar_parameter_counts():
    # The usual CIFAR ResNet-18 has 11,173,962 parameters (10 classes).
    assert n_params(build_model("resnet18", 10)) == 11_173_962
    assert expected_params("resnet50", 10) == 23_520_842


def test_input_adaptations_are_applied():
    r18 = build_model("resnet18", 10)
    assert r18.conv1.kernel_size == (3, 3) and r18.conv1.stride == (1, 1)
    assert isinstance(r18.maxpool, nn.Identity)
    dn = build_model("densenet121", 10)
    assert dn.features.conv0.kernel_size == (3, 3) and dn.features.conv0.stride == (1, 1)
    assert isinstance(dn.features.pool0, nn.Identity)
    for arch in ("efficientnet_b0", "mobilenetv3"):
        assert build_model(arch, 10).features[0][0].stride == (1, 1)


def test_resnet18_keeps_32x32_through_stage_one():
    model = build_model("resnet18", 10)
    seen = {}
    # (hooks must return None, or they replace the module's output)
    model.layer1.register_forward_hook(lambda m, i, o: seen.update(layer1=o.shape))
    model.layer4.register_forward_hook(lambda m, i, o: seen.update(layer4=o.shape))
    with torch.no_grad():
        model(torch.randn(2, 3, 32, 32))
    assert seen["layer1"][-2:] == (32, 32)
    assert seen["layer4"][-2:] == (4, 4)


def test_unknown_arch_lists_known_names():
    with pytest.raises(ValueError) as info:
        build_model("resnet19", 10)
    for name in ARCHITECTURES:
        assert name in str(info.value)
    with pytest.raises(ValueError, match="known architectures"):
        model_flops_per_sample("vgg16")


def test_bad_num_classes():
    with pytest.raises(ValueError, match="num_classes"):
        build_model("tiny_cnn", 1)
    with pytest.raises(ValueError, match="num_classes"):
        build_model("tiny_cnn", 10.0)


def test_tiny_models():
    cnn, mlp = build_model("tiny_cnn", 10), build_model("tiny_mlp", 10)
    assert any(isinstance(m, nn.BatchNorm2d) for m in cnn.modules())
    assert n_params(cnn) < 50_000
    assert not any(isinstance(m, nn.modules.batchnorm._NormBase) for m in mlp.modules())
    # 4x4 average pool -> 192 inputs, 32 hidden, 10 outputs (weights + biases).
    assert n_params(mlp) == 192 * 32 + 32 + 32 * 10 + 10


def test_tiny_mlp_per_sample_gradients_are_exact():
    torch.manual_seed(0)
    model = build_model("tiny_mlp", 10)
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 3, 3, 9])
    params = dict(model.named_parameters())

    def loss_one(p, xi, yi):
        out = torch.func.functional_call(model, p, (xi[None],))
        return nn.functional.cross_entropy(out, yi[None])

    per_sample = torch.func.vmap(torch.func.grad(loss_one), in_dims=(None, 0, 0))(params, x, y)
    for i in range(4):
        model.zero_grad()
        nn.functional.cross_entropy(model(x[i : i + 1]), y[i : i + 1]).backward()
        for name, p in model.named_parameters():
            torch.testing.assert_close(per_sample[name][i], p.grad)


def test_flops_hand_computed():
    # tiny_mlp: 2 FLOPs per multiply-accumulate in the two linear layers (pooling is not counted).
    assert model_flops_per_sample("tiny_mlp", 10) == 2 * (192 * 32 + 32 * 10)
    # tiny_cnn: three 3x3 convs at 32x32, 16x16, 8x8 and the 64->10 head.
    expected = 2 * (3 * 16 * 9 * 32 * 32 + 16 * 32 * 9 * 16 * 16 + 32 * 64 * 9 * 8 * 8 + 64 * 10)
    assert model_flops_per_sample("tiny_cnn", 10) == expected
    # Published figures: CIFAR ResNet-18 ~0.56 GMACs; ViT-B/16 at 224x224 ~17.6 GMACs.
    assert 1.09e9 < model_flops_per_sample("resnet18") < 1.13e9
    assert 34.5e9 < model_flops_per_sample("vit_b16") < 35.7e9
