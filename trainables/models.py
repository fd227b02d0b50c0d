"""Architecture registry: the six study architectures (SPEC §3), two tiny test models, and any timm
model as `timm/<name>` (trainables/timm_archs.py).

Every builder takes the number of classes and returns a freshly initialised ``nn.Module``
(never pretrained, never downloads) that maps an NCHW float batch of 32x32 images to logits
``[N, num_classes]``. How each architecture meets a 32x32 input is a [choice] recorded in
``ArchSpec.input_adaptation``; the registry names are the ones used everywhere (CLI, Parquet
``arch`` column, policy thresholds).
"""

from __future__ import annotations

import difflib
import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torchvision import models as tvm

from trainables import timm_archs
from trainables.timm_archs import ResizeInput

INPUT_SIZE = 32  # every dataset of the study is 32x32x3


@dataclass(frozen=True)
class ArchSpec:
    """One registry entry: name, family, the documented 32x32 choice and the builder."""

    name: str
    family: str
    input_adaptation: str  # one sentence: how this network meets a 32x32 input
    build: Callable[[int], nn.Module]


def _cifar_stem_conv(out_channels: int) -> nn.Conv2d:
    """3x3, stride-1 stem convolution of the usual CIFAR variants (keeps 32x32 resolution)."""
    return nn.Conv2d(3, out_channels, kernel_size=3, stride=1, padding=1, bias=False)


def _build_resnet(factory: Callable[..., tvm.ResNet], num_classes: int) -> nn.Module:
    model = factory(weights=None, num_classes=num_classes)
    # The ImageNet stem (7x7/2 conv + 3x3/2 max-pool) would shrink 32x32 to 8x8 before the
    # first block; the CIFAR stem keeps the full resolution, as in He et al.'s CIFAR setup.
    model.conv1 = _cifar_stem_conv(model.conv1.out_channels)
    model.maxpool = nn.Identity()
    return model


def _build_densenet121(num_classes: int) -> nn.Module:
    model = tvm.densenet121(weights=None, num_classes=num_classes)
    model.features.conv0 = _cifar_stem_conv(model.features.conv0.out_channels)
    model.features.pool0 = nn.Identity()
    return model


def _set_stem_stride_one(stem: nn.Sequential) -> None:
    """Turn the stride-2 stem convolution of a torchvision Conv2dNormActivation into stride 1.

    The weights keep their shape, so this is the smallest possible change to the builder.
    """
    conv = stem[0]
    if not isinstance(conv, nn.Conv2d):  # pragma: no cover - guards a torchvision layout change
        raise TypeError(f"expected a Conv2d as the first stem layer, got {type(conv).__name__}")
    conv.stride = (1, 1)


def _build_efficientnet_b0(num_classes: int) -> nn.Module:
    model = tvm.efficientnet_b0(weights=None, num_classes=num_classes)
    _set_stem_stride_one(model.features[0])
    return model


def _build_mobilenetv3(num_classes: int) -> nn.Module:
    model = tvm.mobilenet_v3_large(weights=None, num_classes=num_classes)
    _set_stem_stride_one(model.features[0])
    return model


def _build_vit_b16(num_classes: int) -> nn.Module:
    # The standard ViT-B/16 (224x224, 14x14 patches); resizing keeps the architecture and its
    # token count unchanged instead of inventing a 2x2-patch variant for 32x32.
    return ResizeInput(tvm.vit_b_16(weights=None, num_classes=num_classes), size=224)


class TinyCNN(nn.Module):
    """Three conv+BatchNorm+ReLU stages and a linear head (~25k parameters): a BatchNorm
    model that trains in seconds on CPU, for tests and the offline demo."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()

        def stage(c_in: int, c_out: int) -> list[nn.Module]:
            return [
                nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ]

        self.features = nn.Sequential(*stage(3, 16), *stage(16, 32), *stage(32, 64))
        self.head = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        return self.head(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class TinyMLP(nn.Module):
    """4x4 average pooling, then a one-hidden-layer MLP (no BatchNorm, ~6.5k parameters).

    Without BatchNorm every sample's loss depends on that sample only, so exact per-sample
    gradients (``torch.func.vmap(grad(...))``) are well defined: the tests of the gradient
    signals use this model.
    """

    def __init__(self, num_classes: int, hidden: int = 32) -> None:
        super().__init__()
        self.pool = nn.AvgPool2d(4)  # 3x32x32 -> 3x8x8
        self.fc1 = nn.Linear(3 * 8 * 8, hidden)
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.pool(x), 1)
        return self.fc2(torch.relu(self.fc1(x)))


_CIFAR_STEM = "3x3 stride-1 stem convolution and no max-pool (the usual CIFAR variant), so stage 1 runs at 32x32."

ARCHITECTURES: dict[str, ArchSpec] = {
    spec.name: spec
    for spec in (
        ArchSpec(
            "resnet18",
            "resnet",
            "ResNet-18 (torchvision) with a " + _CIFAR_STEM,
            functools.partial(_build_resnet, tvm.resnet18),
        ),
        ArchSpec(
            "resnet50",
            "resnet",
            "ResNet-50 (torchvision) with a " + _CIFAR_STEM,
            functools.partial(_build_resnet, tvm.resnet50),
        ),
        ArchSpec("densenet121", "densenet", "DenseNet-121 (torchvision) with a " + _CIFAR_STEM, _build_densenet121),
        ArchSpec(
            "efficientnet_b0",
            "efficientnet",
            "EfficientNet-B0 (torchvision) with its stem convolution at stride 1 instead of 2 "
            "(weights unchanged), so the final feature map is 2x2 instead of 1x1.",
            _build_efficientnet_b0,
        ),
        ArchSpec(
            "mobilenetv3",
            "mobilenet",
            "MobileNetV3-Large (torchvision) with its stem convolution at stride 1 instead of 2 "
            "(weights unchanged), so the final feature map is 2x2 instead of 1x1.",
            _build_mobilenetv3,
        ),
        ArchSpec(
            "vit_b16",
            "vit",
            "Standard ViT-B/16 (torchvision, 224x224, 196 patches); the 32x32 input is resized "
            "to 224x224 bilinearly inside the model.",
            _build_vit_b16,
        ),
        ArchSpec("tiny_cnn", "test", "Tiny test CNN built for 32x32 (global average pooling).", TinyCNN),
        ArchSpec("tiny_mlp", "test", "Tiny test MLP: 4x4 average pooling to 3x8x8, then flatten.", TinyMLP),
    )
}


def check_arch(arch: str) -> None:
    """Refuse an architecture name neither the registry nor timm (`timm/<name>`) knows, naming the
    known ones (and close names)."""
    if isinstance(arch, str) and arch in ARCHITECTURES:
        return
    if timm_archs.is_timm(arch):
        timm_archs.model_name(arch)
        return
    close = difflib.get_close_matches(str(arch), list(ARCHITECTURES), n=3, cutoff=0.6)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    raise ValueError(
        f"arch={arch!r} is not allowed; expected one of the known architectures: "
        f"{', '.join(ARCHITECTURES)}, or timm/<name> for any timm model{hint}"
    )


def get_arch(arch: str) -> ArchSpec:
    """The registry entry for ``arch``; ValueError naming the known architectures otherwise."""
    check_arch(arch)
    return ARCHITECTURES[arch]


def build_model(arch: str, num_classes: int, timm_input: str | None = None) -> nn.Module:
    """A freshly initialised model (no pretrained weights) for 32x32 NCHW float input; a timm arch
    is built as `timm_input` says (trainables/timm_archs.py; None = its automatic choice)."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    if timm_archs.is_timm(arch):
        return timm_archs.build(arch, num_classes, timm_archs.resolve_input(arch, num_classes, timm_input or "auto"))
    return get_arch(arch).build(num_classes)


@functools.cache
def model_flops_per_sample(arch: str, num_classes: int = 10, timm_input: str | None = None) -> float | None:
    """Forward FLOPs (2 per multiply-accumulate) for one 32x32 image, or None if not countable.

    Counted with ``torch.utils.flop_counter.FlopCounterMode`` on the meta device (no memory,
    no compute); like every MFU convention it counts matmuls/convolutions/attention only.
    """
    from torch.utils.flop_counter import FlopCounterMode

    check_arch(arch)  # validate the name before doing any work
    batch = 2
    with torch.device("meta"):
        model = build_model(arch, num_classes, timm_input).eval()
        x = torch.empty(batch, 3, INPUT_SIZE, INPUT_SIZE)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(x)
    total = counter.get_total_flops()
    return float(total) / batch if total > 0 else None
