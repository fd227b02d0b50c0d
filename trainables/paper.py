"""The DEBA paper's constants (arXiv 2511.03809; docs/SPEC.md), in one place for every package.

Pure Python: the policies (their options' defaults), the orchestrator's presets and the analysis import them.
"""

from __future__ import annotations

# The six architectures of the study (registry names, SPEC §3).
ARCHS: tuple[str, ...] = ("resnet18", "resnet50", "densenet121", "efficientnet_b0", "mobilenetv3", "vit_b16")
SEEDS: tuple[int, ...] = (2, 7, 42, 123, 199)
PROFILE_SEEDS: tuple[int, ...] = (2, 42, 199)
DATASETS: tuple[str, ...] = ("cifar10", "cifar100")
EPOCHS = 100

# Table 1: (theta_stab, theta_conf) per architecture.
THRESHOLDS: dict[str, tuple[float, float]] = {
    "mobilenetv3": (0.25, 0.5),
    "efficientnet_b0": (0.60, 0.8),
    "resnet18": (0.55, 0.6),
    "resnet50": (12.0, 0.8),
    "densenet121": (0.55, 0.6),
    "vit_b16": (0.40, 0.7),
}
UNIVERSAL_THRESHOLDS: tuple[float, float] = (0.3, 0.5)  # the ablation's [choice]

# The batch-size schedule the paper quotes: 64 -> 96 -> 144 -> 216 -> 324 -> 486 -> 729 -> 1024,
# one change per 10-epoch cooldown (SPEC §2, §4).
B0 = 64
GROWTH = 1.5
SHRINK = 0.8
B_MIN = 32  # [choice]
B_MAX = 1024
COOLDOWN = 10
WINDOW = 15
LARGE_BATCH = 729  # the path's last step below B_max: "reached 729" marks a paper-like run
