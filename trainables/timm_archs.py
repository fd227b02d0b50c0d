"""Any timm model as an architecture: `timm/<name>` (never pretrained, never downloads).

How a model meets a 32x32 input is an explicit choice, part of the trial's identity (TrialConfig's
`timm_input`), written as the keyword arguments given to `timm.create_model` or a resize:

- "img_size=32[,patch_size=P][,window_size=W]": timm's own input-size arguments, for the models
  that take them (ViT/DeiT/Swin/CoAtNet/MaxViT/LeViT/EfficientFormerV2 ...). A patch-16 ViT at 32x32
  would see 2x2 patches, so where the default patch leaves a grid under 8x8 a smaller patch is
  chosen (ViT/DeiT: patch 4, 64 tokens; a windowed model also gets window 4); windowed models
  (Swin) whose patch grid is already 8x8 get window_size = min(8, grid), one window per stage-1 grid.
- "native": the model's own stem at 32x32 (CNNs: ResNet, ConvNeXt, EfficientNet, MobileNet, RegNet;
  their final feature map is usually 1x1).
- "resize=N": the input is resized bilinearly to NxN inside the model (the registry's ViT-B/16
  choice; 150x the compute of resnet10t at 32).

"auto" (the default) takes the first of: img_size (when the constructor takes it), native, that
passes a probe: the model built on the meta device (no memory, no compute) runs one forward of a
[2, 3, 32, 32] input to [2, num_classes] logits. Findings behind these rules (timm 1.0.31):
constructor signatures are not enough (some models hide img_size behind **kwargs, some take it and
ignore it), hence the probe; a few models run at 32 neither way (inception_v3, halonet26t,
efficientformer_l1) and need "resize=N".
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import warnings
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

PREFIX = "timm/"
INPUT_SIZE = 32
MIN_GRID = 8  # a transformer's patch grid at 32x32 should be at least 8x8 (64 tokens)


class ResizeInput(nn.Module):
    """Bilinearly resize the input to ``size`` x ``size`` before running ``model``."""

    def __init__(self, model: nn.Module, size: int) -> None:
        super().__init__()
        self.size = size
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (self.size, self.size):
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        return self.model(x)


def is_timm(arch: Any) -> bool:
    """Whether `arch` names a timm model (`timm/<name>`)."""
    return isinstance(arch, str) and arch.startswith(PREFIX)


@functools.lru_cache(maxsize=1)
def timm_names() -> frozenset[str]:
    """Every model name timm knows (its registry; no pretrained tags)."""
    import timm

    return frozenset(timm.list_models())


def model_name(arch: str) -> str:
    """`timm/<name>` -> `<name>`; ValueError (with close names) unless timm knows it."""
    name = arch[len(PREFIX) :]
    if name in timm_names():
        return name
    hint = ""
    if ":" not in name and "/" not in name:
        close = difflib.get_close_matches(name, sorted(timm_names()), n=5, cutoff=0.6)
        hint = f"; close timm names: {', '.join(PREFIX + c for c in close)}" if close else ""
    raise ValueError(
        f"arch={arch!r} is not allowed; expected timm/<a name of timm.list_models()> (only timm's own "
        f"registry: no hf-hub:, local-dir: or pretrained sources){hint}"
    )


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def parse_input(text: str) -> dict[str, Any]:
    """ "img_size=32,patch_size=4" -> {"img_size": 32, "patch_size": 4}; "native" -> {};
    "resize=224" -> {"resize": 224}; ValueError naming timm_input otherwise."""
    if text == "native":
        return {}
    out: dict[str, Any] = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        if (
            not sep
            or key not in ("img_size", "patch_size", "window_size", "resize")
            or not value.isdigit()
            or int(value) < 1
        ):
            raise ValueError(
                f"timm_input={text!r} is not allowed; expected auto, native, resize=N, or "
                "img_size=32[,patch_size=P][,window_size=W]"
            )
        out[key] = int(value)
    if "resize" in out and len(out) > 1:
        raise ValueError(f"timm_input={text!r} is not allowed; expected resize=N alone")
    return out


def format_input(kwargs: dict[str, Any]) -> str:
    """The canonical text of an input choice (the inverse of `parse_input`)."""
    if not kwargs:
        return "native"
    order = ("resize", "img_size", "patch_size", "window_size")
    return ",".join(f"{k}={kwargs[k]}" for k in order if k in kwargs)


def _create(name: str, num_classes: int, kwargs: dict[str, Any], device: str | None = None) -> nn.Module:
    import timm

    build = {k: v for k, v in kwargs.items() if k != "resize"}
    with _quiet(), torch.device(device) if device else contextlib.nullcontext():
        model = timm.create_model(name, pretrained=False, num_classes=num_classes, **build)
    return ResizeInput(model, kwargs["resize"]) if "resize" in kwargs else model


def probe(name: str, num_classes: int, kwargs: dict[str, Any]) -> str | None:
    """None when the model, built with `kwargs` on the meta device, maps a 32x32 batch to logits;
    else why not."""
    try:
        model = _create(name, num_classes, kwargs, device="meta").eval()
        with torch.no_grad(), _quiet():
            out = model(torch.empty(2, 3, INPUT_SIZE, INPUT_SIZE, device="meta"))
    except Exception as exc:  # timm raises TypeError, AssertionError, RuntimeError, ...
        return f"{type(exc).__name__}: {str(exc)[:200]}"
    return None if tuple(out.shape) == (2, num_classes) else f"logits of shape {tuple(out.shape)}"


def _patch_size(name: str) -> int | None:
    """The model's (first) patch embedding's patch size, when it has one."""
    model = _create(name, 10, {}, device="meta")
    for module in model.modules():
        p = getattr(module, "patch_size", None)
        p = p[0] if isinstance(p, (tuple, list)) and p else p
        if isinstance(p, int) and p > 0:
            return p
    return None


def _accepts(name: str, key: str, value: int) -> bool:
    """Whether timm's constructor takes `key` (building on meta; a TypeError means it does not)."""
    try:
        _create(name, 10, {key: value}, device="meta")
    except TypeError:
        return False
    except Exception:  # it took the argument and objected to the size: accepted
        return True
    return True


def _candidates(name: str) -> list[dict[str, Any]]:
    """The img_size choices to probe, best first (see the module docstring)."""
    if not _accepts(name, "img_size", INPUT_SIZE):
        return []
    base = {"img_size": INPUT_SIZE}
    out = []
    patch = _patch_size(name)
    if patch and INPUT_SIZE // patch < MIN_GRID and _accepts(name, "patch_size", INPUT_SIZE // MIN_GRID):
        if _accepts(name, "window_size", 4):  # Swin: patch 2 and window 4 tile every stage at 32
            out.append({**base, "patch_size": 2, "window_size": 4})
        out.append({**base, "patch_size": INPUT_SIZE // MIN_GRID})
    elif patch and _accepts(name, "window_size", 8):  # SwinV2-CR: windows follow the grid otherwise
        out.append({**base, "window_size": min(8, INPUT_SIZE // patch)})
    out.append(base)
    return out


@functools.cache
def resolve_input(arch: str, num_classes: int, choice: str = "auto") -> str:
    """The concrete input choice of a timm arch (see the module docstring); ValueError naming
    timm_input when the model cannot run with it."""
    name = model_name(arch)
    if choice != "auto":
        kwargs = parse_input(choice)
        why = probe(name, num_classes, kwargs)
        if why is not None:
            raise ValueError(
                f"timm_input={choice!r} is not allowed for {arch}: the model does not run with it "
                f"at {INPUT_SIZE}x{INPUT_SIZE} ({why}); try auto or resize=224"
            )
        return format_input(kwargs)
    tried = []
    for kwargs in [*_candidates(name), {}]:
        why = probe(name, num_classes, kwargs)
        if why is None:
            return format_input(kwargs)
        tried.append(f"{format_input(kwargs)}: {why}")
    raise ValueError(
        f"timm_input='auto' is not allowed for {arch}: it runs at {INPUT_SIZE}x{INPUT_SIZE} neither with "
        f"timm's img_size nor with its native stem ({'; '.join(tried)}); pass --timm-input resize=224"
    )


def describe(arch: str, choice: str) -> str:
    """One sentence: how this arch meets a 32x32 input (the registry's `input_adaptation`)."""
    kwargs = parse_input(choice)
    if "resize" in kwargs:
        return f"timm {model_name(arch)}, the 32x32 input resized bilinearly to {kwargs['resize']} inside the model."
    if kwargs:
        return f"timm {model_name(arch)} built with {choice} (timm's own input-size arguments)."
    return f"timm {model_name(arch)} with its native stem at 32x32."


def build(arch: str, num_classes: int, choice: str) -> nn.Module:
    """A freshly initialised timm model for 32x32 input (never pretrained)."""
    return _create(model_name(arch), num_classes, parse_input(choice))
