"""The trial settings of folder datasets checked against each other (called by TrialConfig).

A folder dataset (trainables/folders.py) records its input size (`input_size`: null = 32, recorded
as 32) and defaults to the random-resized-crop + flip augmentation; it streams through Ray Data
unless `data_loader=resident`. The built-in datasets are 32x32 and device-resident: `input_size` stays
null there (32 is read as null, so their trial ids do not change), and neither streaming nor the
resized crop applies to them. Pure Python.
"""

from __future__ import annotations

from typing import Any

from trainables.settings import fail

DEFAULT_INPUT_SIZE = 32  # the registry's archs are built for 32x32 inputs (trainables/models.py)
FOLDER_AUGMENTATION = "resized_crop_flip"  # ImageNet's standard training augmentation
# Archs whose head assumes a 32x32 input (a fixed-size flatten): other input sizes are refused.
FIXED_INPUT_ARCHS: frozenset[str] = frozenset({"tiny_mlp"})


def check_data_settings(cfg: Any, folder: bool) -> None:
    """Normalise and check input_size, data_loader and augment of a TrialConfig (frozen: set in place)."""
    from trainables import timm_archs

    if not folder:
        if cfg.input_size not in (None, DEFAULT_INPUT_SIZE):
            fail("input_size", cfg.input_size, f"null (or {DEFAULT_INPUT_SIZE}) for the 32x32 dataset {cfg.dataset!r}")
        object.__setattr__(cfg, "input_size", None)  # the built-ins' trial ids stay those of before the setting
        if cfg.data_loader == "stream":
            fail("data_loader", cfg.data_loader, f"'auto' or 'resident' for the built-in dataset {cfg.dataset!r}")
        if cfg.augment == FOLDER_AUGMENTATION:
            fail("augment", cfg.augment, f"crop_flip, crop or none for the built-in dataset {cfg.dataset!r}")
        return
    from trainables.folders import folder_name

    try:
        folder_name(cfg.dataset)
    except ValueError as exc:
        raise ValueError(str(exc)) from None
    if cfg.input_size is None:
        object.__setattr__(cfg, "input_size", DEFAULT_INPUT_SIZE)  # recorded, never left implicit
    if timm_archs.is_timm(cfg.arch):
        fail("arch", cfg.arch, "a registry arch for a folder dataset (timm/ archs are not wired to folders yet)")
    if cfg.arch in FIXED_INPUT_ARCHS and cfg.input_size != DEFAULT_INPUT_SIZE:
        fail("input_size", cfg.input_size, f"{DEFAULT_INPUT_SIZE} for {cfg.arch}, whose head assumes 32x32 inputs")
    if cfg.data_loader == "resident" and cfg.augment == FOLDER_AUGMENTATION:
        fail(
            "augment",
            cfg.augment,
            "crop_flip, crop or none with data_loader=resident (the random-resized crop is done while streaming)",
        )
