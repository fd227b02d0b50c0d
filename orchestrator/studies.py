"""Study definitions: presets, overrides, expansion to frozen trial specs, validation.

A `StudySpec` names a grid (archs x datasets x seeds x methods x variants) plus the settings shared
by its trials; `expand` turns it into `TrialSpec`s, each carrying the complete, validated
`trainables.loop.TrialLoop` config and a stable `trial_id`. Every check runs here, before Ray
starts, and a bad value raises ValueError naming the field and the allowed values.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from trainables import paper
from trainables.config import (
    DEFAULT_CONFIG,
    EXECUTION_FIELDS,
    IDENTITY_FIELDS,
    SEED_MAX,
    TrialConfig,
    canonical_json,
    trial_id_of,
)
from trainables.data_parallel import check_workers_archs, workers_for
from trainables.policies import POLICY_NAMES
from trainables.policies.deba import TEST_ARCH_THRESHOLDS
from trainables.policies.variants import ABLATIONS, BASELINE, READINGS, VARIANTS
from trainables.records import ID_NAMES, check_text
from trainables.settings import MISSING, check, fail, fields_of, setting, validate

__all__ = ["EXECUTION_KEYS", "PRESETS", "StudySpec", "TrialSpec", "canonical_json", "expand", "preset",
           "trial_id_of", "validate_study", "waiting_for_calibration", "with_overrides"]  # fmt: skip

PAPER_ARCHS, PAPER_SEEDS, PROFILE_SEEDS = paper.ARCHS, paper.SEEDS, paper.PROFILE_SEEDS

# Built-in variants (trainables/policies/variants.py): the paper's ablations and the readings of SPEC §4.
ABLATION_VARIANTS: tuple[str, ...] = tuple(ABLATIONS)
# The reconstruction preset's CPU size (Fashion-MNIST subset sizes); see _reconstruction.
RECONSTRUCTION_TRAIN_LIMIT = 2000
RECONSTRUCTION_TEST_LIMIT = 1000

# DEBA thresholds of the demo's tiny archs (they have no Table 1 row), calibrated by SPEC §2's rule
# from fixed runs of the demo setting, seeds 0-2 (trainables/policies/deba.py):
#   run_grid.py --methods fixed --seeds 0,1,2 --study demo_profile  -> analysis calibration table
DEMO_THRESHOLDS: dict[str, dict[str, float]] = {
    arch: {"theta_stab": stab, "theta_conf": conf} for arch, (stab, conf) in TEST_ARCH_THRESHOLDS.items()
}

# Loop-config keys that change how a trial runs but not what it computes (TrialConfig's execution
# fields): left out of trial_id, so moving a study to other hardware keeps its finished trials.
EXECUTION_KEYS: frozenset[str] = EXECUTION_FIELDS
# TrialConfig fields a study sets itself, never through `loop`: the grid's, and data_dir (--data-dir).
RESERVED_LOOP_KEYS: frozenset[str] = frozenset(
    {"arch", "dataset", "seed", "method", "variant", "policy", "epochs", "data_dir", "workers"}
)
# Test hooks: a trial process dying after an epoch (trainables.ray_trainable), and the driver pausing
# right after Tune registered a checkpoint, before its experiment snapshot (runner.PauseAfterSave),
# which widens the window a random kill lands in.
TEST_HOOKS: frozenset[str] = frozenset({"fail_at_epoch", "fail_marker_dir", "driver_pause_after_save_s"})


STUDY_NAME_MAX = 100  # characters: <results>/<study>/ and its lock file name must fit a file system's 255


@dataclass(frozen=True)
class StudySpec:
    """A study: the grid and the settings its trials share (each field a typed setting, checked by
    `validate_study`; run_grid's flags are generated from the fields marked for the command line).

    `policy` holds study-wide policy options, applied to every method that accepts them;
    `variant_defs` adds user-named variants (name -> policy options); `thresholds` maps
    arch -> {"theta_stab", "theta_conf"} for DEBA trials (calibrated values); `loop` holds trial
    settings for every trial (TrialConfig fields: lr, train_limit, ...). `calibrate=True`: DEBA
    thresholds come from the study's own fixed runs, per arch and signal reading, in a second phase
    (orchestrator/calibration.py). `hooks` are test hooks (see trainables.ray_trainable).
    """

    name: str = setting(
        MISSING, "study name (results subdirectory); default: the preset's name", kind="str", flag="--study"
    )
    archs: tuple[str, ...] = setting(
        MISSING, "architectures: registry names or timm/<name> (comma or space separated)", kind="list", items="str"
    )
    datasets: tuple[str, ...] = setting(MISSING, "datasets", kind="list", items="str")
    seeds: tuple[int, ...] = setting(MISSING, "integer seeds", kind="list", items="int", minimum=0, maximum=SEED_MAX)
    methods: tuple[str, ...] = setting(
        MISSING, "batch-size policies", kind="list", items="choice", choices=POLICY_NAMES
    )
    variants: tuple[str, ...] = setting(
        (BASELINE,), "variants: " + ", ".join(VARIANTS) + ", or names from --define-variant", kind="list", items="str"
    )
    epochs: int = setting(100, "epochs per trial", kind="int", minimum=1)
    loop: dict[str, Any] = setting({}, "trial settings for every trial", kind="mapping", cli=False)
    policy: dict[str, Any] = setting({}, "study-wide policy options", kind="mapping", cli=False)
    variant_defs: dict[str, dict[str, Any]] = setting({}, "user-named variants", kind="mapping", cli=False)
    thresholds: dict[str, dict[str, float]] = setting({}, "per-arch DEBA thresholds", kind="mapping", cli=False)
    data_dir: str | None = setting(
        None, "directory with local dataset copies (CIFAR, Fashion-MNIST)", kind="path", nullable=True
    )
    gpus_per_trial: float | None = setting(
        None,
        "GPUs per trial: 0, a fraction in (0, 1] (packs trials) or a whole number; default 1 if the cluster "
        "has GPUs, else 0",
        kind="float",
        minimum=0.0,
        nullable=True,
    )
    cpus_per_trial: float = setting(1.0, "CPUs per trial", kind="float", minimum=0.0, strict=True)
    workers_per_trial: str = setting(
        "1",
        "data-parallel workers per trial (Ray Train DDP; each takes the CPUs and GPUs of one trial): W, or per "
        "arch ARCH=W,...[,W] (vit_b16=4,resnet50=2,1); the policy adapts the global batch",
        kind="str",
    )
    max_failures: int = setting(
        2, "retries per trial, each resuming from the last checkpoint (-1: unlimited)", kind="int", minimum=-1
    )
    checkpoint_every: int = setting(
        1,
        "checkpoint every K-th epoch (the last and a diverged epoch always): fewer checkpoints of big models, "
        "a retry re-runs up to K-1 epochs",
        kind="int",
        minimum=1,
    )
    hooks: dict[str, Any] = setting({}, "test hooks", kind="mapping", cli=False)
    description: str = setting("", "what the study is", kind="path", cli=False)
    calibrate: bool = setting(False, "calibrate DEBA thresholds from the study's fixed runs", kind="bool", cli=False)


def trial_label(arch: str, dataset: str, seed: int, method: str, variant: str) -> str:
    """A trial's short human-readable name (its cell of the study grid)."""
    return f"{arch}-{dataset}-s{seed}-{method}-{variant}"


@dataclass(frozen=True)
class TrialSpec:
    """One trial of a study: its typed config, and the id and identifiers derived from it."""

    study: str
    config: TrialConfig
    trial_id: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "trial_id", self.config.trial_id())

    @property
    def arch(self) -> str:
        """The trial's architecture (its config's)."""
        return self.config.arch

    @property
    def dataset(self) -> str:
        """The trial's dataset."""
        return self.config.dataset

    @property
    def seed(self) -> int:
        """The trial's seed."""
        return self.config.seed

    @property
    def method(self) -> str:
        """The trial's batch-size policy."""
        return self.config.method

    @property
    def variant(self) -> str:
        """The name of the method's configuration."""
        return self.config.variant

    @property
    def config_json(self) -> str:
        """The stored config document (every setting, the schema and package versions), canonical JSON."""
        return canonical_json(self.config.stored())

    def identifiers(self) -> dict[str, Any]:
        """The identifier columns of the results tables (trainables/records.py ID_COLUMNS)."""
        return {name: getattr(self, name) for name in ID_NAMES}

    @property
    def label(self) -> str:
        """Short human-readable name, unique within a study together with the id."""
        return trial_label(self.arch, self.dataset, self.seed, self.method, self.variant)


def _full(config: Mapping[str, Any]) -> dict[str, Any]:
    """A stored config document as the full config it ran with; as stored when this version cannot read it."""
    try:
        return TrialConfig.from_stored(config).to_dict()
    except (ValueError, TypeError, KeyError):  # a config of an older version of the tool: compared as stored
        return dict(config)


def config_differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """ "field: old -> new" for each identity field (policy options one by one) that differs between two
    stored config documents. Both are read as the full configs they ran with first, so that spellings of
    one setting (an explicit default, 2 for 2.0, a schema-1 config without its defaults) are no difference."""
    a, b = _full(old), _full(new)
    a = {k: v for k, v in a.items() if k in IDENTITY_FIELDS}
    b = {k: v for k, v in b.items() if k in IDENTITY_FIELDS}
    a = {**{k: v for k, v in a.items() if k != "policy"}, **{f"policy.{k}": v for k, v in a.get("policy", {}).items()}}
    b = {**{k: v for k, v in b.items() if k != "policy"}, **{f"policy.{k}": v for k, v in b.get("policy", {}).items()}}
    missing = "(unset)"
    return [
        f"{k}: {a.get(k, missing)!r} -> {b.get(k, missing)!r}"
        for k in sorted(set(a) | set(b))
        if a.get(k, missing) != b.get(k, missing)
    ]


def defaults_since(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, str]:
    """Trial settings whose stored value (`old`, a stored config document) is the neutral value of a
    setting added since, while `new` holds today's default: setting -> the command-line text that keeps
    the stored value (`{"subset_seed": "null"}`). These are what an old command needs to continue its study."""
    a, b = _full(old), _full(new)
    out = {}
    for f in fields_of(TrialConfig):
        neutral = f.metadata["neutral"]
        if f.name in IDENTITY_FIELDS and neutral is not MISSING and a.get(f.name) == neutral != b.get(f.name):
            if b.get(f.name) == DEFAULT_CONFIG.get(f.name):
                out[f.name] = json.dumps(neutral)
    return out


# ---------------------------------------------------------------------------------------------- presets


def _available_methods() -> tuple[str, ...]:
    from trainables.policies import POLICY_NAMES

    return tuple(POLICY_NAMES)


def _demo() -> StudySpec:
    # Both archs train in well under a second per epoch on one CPU core and reach ~80% test accuracy
    # on digits within the demo's epochs. The study archs are too slow for a minutes-long demo on a
    # 2-core CPU (measured: resnet18 20-38 s per epoch on 384 images; mobilenetv3 8-12 s on 512 and
    # still at chance after 8 epochs): run them with --archs and --loop-opt train_limit=N instead.
    return StudySpec(
        name="demo",
        archs=("tiny_cnn", "tiny_mlp"),
        datasets=("digits",),
        seeds=(0, 1),
        methods=("fixed", "deba"),
        epochs=12,
        # Demonstration scale, not the paper's: 12 epochs, cooldown 2, window 5, b_max 512 on the
        # 1,437-image digits training split (B=1024 would leave one step per epoch).
        policy={"cooldown": 2, "window": 5, "b_max": 512},
        # The tiny archs have no Table 1 row: thresholds calibrated by SPEC §2's rule from the demo's
        # own fixed runs (see README).
        thresholds=dict(DEMO_THRESHOLDS),
        loop={"eval_batch_size": 512},
        max_failures=1,
        description="demonstration on digits (offline, CPU, minutes): tiny models, scaled-down epochs, "
        "cooldown and window; not the paper's setting",
    )


def _paper() -> StudySpec:
    return StudySpec(
        name="paper",
        archs=PAPER_ARCHS,
        datasets=("cifar10", "cifar100"),
        seeds=PAPER_SEEDS,
        methods=("fixed", "deba"),
        epochs=100,
        description="paper main grid (SPEC §3): 6 archs x 2 datasets x 5 seeds x {fixed, deba}",
    )


def _ablations() -> StudySpec:
    # Both baselines are part of the study so that its comparisons need no other study's rows.
    return StudySpec(
        name="ablations",
        archs=PAPER_ARCHS,
        datasets=("cifar10",),
        seeds=PAPER_SEEDS,
        methods=("fixed", "deba"),
        variants=("baseline",) + ABLATION_VARIANTS,
        epochs=100,
        description="DEBA ablations on cifar10 (universal thresholds, cooldown 2/5, full "
        "history) with the fixed and DEBA baselines",
    )


def _profile() -> StudySpec:
    return StudySpec(
        name="profile",
        archs=PAPER_ARCHS,
        datasets=("cifar10", "cifar100"),
        seeds=PROFILE_SEEDS,
        methods=("fixed",),
        epochs=100,
        description="fixed-batch profiling runs whose signals calibrate thresholds and taxonomy",
    )


def _methods() -> StudySpec:
    # Every registered policy side by side at demonstration scale (offline, CPU, minutes), with the
    # demo's tiny archs and calibrated thresholds. resize_every 3 lets AdaBatch and DiveBatch resize
    # (x3 in 10 epochs); b_max 512 keeps at least two steps per epoch on the 1,437-image split.
    demo = _demo()
    return dataclasses.replace(
        demo,
        name="methods",
        methods=_available_methods(),
        epochs=10,
        policy={**demo.policy, "resize_every": 3},
        description="every registered batch-size policy side by side on digits (offline, CPU, minutes): "
        "tiny models, scaled-down epochs, cooldown, window and resize interval; not the paper's "
        "setting (that is methods_paper)",
    )


def _methods_paper() -> StudySpec:
    return StudySpec(
        name="methods_paper",
        archs=PAPER_ARCHS,
        datasets=("cifar10", "cifar100"),
        seeds=PAPER_SEEDS,
        methods=_available_methods(),
        epochs=100,
        description="every registered batch-size policy on the paper grid",
    )


# One reading per reconstructed element of SPEC §2 (built-in variants, trainables/policies/variants.py);
# SPEC §4's reconstruction study runs each with thresholds calibrated for it.
RECONSTRUCTION_READINGS: dict[str, dict[str, Any]] = dict(READINGS)
# Seeds of the reconstruction study: the paper's five and one more (SPEC §4 asks for at least six).
RECONSTRUCTION_SEEDS: tuple[int, ...] = PAPER_SEEDS + (256,)


def _reconstruction() -> StudySpec:
    # CPU default sized for about an hour on 2 cores (docs/results/reconstruction-fashion-cpu/): tiny_cnn on
    # a fixed Fashion-MNIST subset (subset_seed 0 for every seed), the paper's 100 epochs, cooldown 10 and
    # window 15. On GPUs scale it up with --archs resnet18 --train-limit null --test-limit null.
    return StudySpec(
        name="reconstruction",
        archs=("tiny_cnn",),
        datasets=("fashion_mnist",),
        seeds=RECONSTRUCTION_SEEDS,
        methods=("fixed", "deba"),
        variants=("baseline",) + tuple(RECONSTRUCTION_READINGS),
        epochs=100,
        loop={
            "train_limit": RECONSTRUCTION_TRAIN_LIMIT,
            "test_limit": RECONSTRUCTION_TEST_LIMIT,
            "record_epoch_mean": True,
        },
        calibrate=True,
        max_failures=1,
        description="which reading of DEBA's lost equations reproduces the paper's batch-size path: fixed "
        "runs calibrate thresholds per reading, then DEBA runs once per reading (SPEC §4)",
    )


# Table 1 profile on a 2-core CPU (docs/results/table1-fashion-cpu/): the paper's own architectures with
# fixed B = 64 on a Fashion-MNIST subset, recording last-step and epoch-mean statistics, so that the
# analysis calibrates every reading's thresholds beside Table 1 (SPEC §4, threshold fidelity). Measured
# here: resnet18 about 60 s and mobilenetv3 about 12 s per epoch of 1,024 images on one idle core
# (2.5x that with the other core busy).
TABLE1_TRAIN_LIMIT = 1024
TABLE1_TEST_LIMIT = 512
TABLE1_EPOCHS = 16


def _table1() -> StudySpec:
    return StudySpec(
        name="table1",
        archs=("resnet18", "mobilenetv3"),
        datasets=("fashion_mnist",),
        seeds=PROFILE_SEEDS[:2],  # 2 and 42: two of the paper's three profiling seeds, for the CPU's budget
        methods=("fixed",),
        epochs=TABLE1_EPOCHS,
        loop={"train_limit": TABLE1_TRAIN_LIMIT, "test_limit": TABLE1_TEST_LIMIT, "record_epoch_mean": True},
        max_failures=1,
        description="Table 1 profile (CPU size): fixed B=64 runs of resnet18 and mobilenetv3 on a Fashion-MNIST "
        "subset whose signals calibrate every reading's thresholds beside Table 1 (SPEC §4)",
    )


def _table1_full() -> StudySpec:
    # The same profile at the paper's scale (GPUs): the six architectures, the whole of Fashion-MNIST, 100 epochs.
    return dataclasses.replace(
        _table1(),
        name="table1_full",
        archs=PAPER_ARCHS,
        seeds=PROFILE_SEEDS,
        epochs=paper.EPOCHS,
        loop={"record_epoch_mean": True},
        max_failures=2,
        description="Table 1 profile at full scale (GPUs): fixed B=64 runs of the six paper architectures on "
        "all of Fashion-MNIST, 100 epochs, last-step and epoch-mean statistics (SPEC §4)",
    )


PRESETS: dict[str, Callable[[], StudySpec]] = {
    "demo": _demo,
    "paper": _paper,
    "ablations": _ablations,
    "profile": _profile,
    "methods": _methods,
    "methods_paper": _methods_paper,
    "reconstruction": _reconstruction,
    "table1": _table1,
    "table1_full": _table1_full,
}


def preset(name: str) -> StudySpec:
    """The StudySpec of preset `name`."""
    if name not in PRESETS:
        raise ValueError(f"preset={name!r} is not known; allowed values: {', '.join(PRESETS)}")
    return PRESETS[name]()


def with_overrides(study: StudySpec, **overrides: Any) -> StudySpec:
    """A copy of `study` with the given fields replaced (None values are ignored)."""
    names = {f.name for f in dataclasses.fields(StudySpec)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ValueError(f"unknown study field(s) {', '.join(unknown)}; allowed: {', '.join(sorted(names))}")
    given = {k: v for k, v in overrides.items() if v is not None}
    for key in ("archs", "datasets", "seeds", "methods", "variants"):
        if key in given:
            given[key] = tuple(given[key])
    return dataclasses.replace(study, **given)


def load_thresholds(path: str) -> dict[str, dict[str, float]]:
    """Read a thresholds file: JSON mapping arch -> {"theta_stab": x, "theta_conf": y}."""
    check_text(path, "thresholds")
    try:
        with open(os.path.expanduser(path), encoding="utf-8") as f:
            data = json.load(f)
    except UnicodeDecodeError as exc:
        raise ValueError(f"thresholds={path!r} is not UTF-8 text (byte {exc.start}); save it as UTF-8 JSON") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"thresholds={path!r} cannot be read as JSON: {exc}") from exc
    _check_thresholds(data)
    return {arch: {k: float(v) for k, v in pair.items()} for arch, pair in data.items()}


# ------------------------------------------------------------------------------------------- validation


def _check_thresholds(data: Any) -> None:
    from trainables.models import check_arch

    if not isinstance(data, dict):
        fail("thresholds", data, 'a mapping arch -> {"theta_stab": x, "theta_conf": y}')
    for arch, pair in data.items():
        try:
            check_arch(arch)
        except ValueError as exc:
            raise ValueError(f"thresholds key: {exc}") from None
        if not isinstance(pair, dict) or set(pair) != {"theta_stab", "theta_conf"}:
            fail(f"thresholds[{arch!r}]", pair, 'exactly {"theta_stab": x, "theta_conf": y}')
        for k, v in pair.items():
            check(f"thresholds[{arch!r}].{k}", v, THRESHOLD_META)


THRESHOLD_META = {
    "kind": "float", "minimum": 0.0, "strict": True, "maximum": None, "below": None, "nullable": False,
    "choices": None, "items": None,
}  # fmt: skip


def _check_calibrating(study: StudySpec) -> None:
    """A calibrating study needs fixed runs, sets no thresholds of its own, and records the
    epoch-mean statistics when a reading uses them."""
    if "fixed" not in study.methods:
        fail(
            "methods",
            study.methods,
            "the fixed method among them: a calibrating study's fixed runs calibrate the thresholds",
        )
    if study.thresholds:
        fail(
            "thresholds",
            sorted(study.thresholds),
            "none: this study calibrates its thresholds from its own fixed runs; drop --thresholds, or run a "
            "study without calibration",
        )
    given = sorted(THRESHOLD_OPTIONS & set(study.policy))
    if given:
        fail(
            "policy",
            given,
            "no thresholds: this study calibrates them from its own fixed runs; set them per variant "
            "(--define-variant NAME:theta_stab=X,theta_conf=Y) or run a study without calibration",
        )
    table = variant_table(study)
    epoch_mean = [
        v for v in study.variants if {**study.policy, **table[v]}.get("signal_source") in ("epoch_mean", "mixed")
    ]
    if epoch_mean and study.loop.get("record_epoch_mean") is not True:
        fail(
            "record_epoch_mean",
            study.loop.get("record_epoch_mean"),
            f"true: variants {', '.join(epoch_mean)} read epoch-mean signals, so the fixed runs that calibrate "
            "them must record them (--record-epoch-mean true)",
        )


def variant_table(study: StudySpec) -> dict[str, dict[str, Any]]:
    """Built-in plus user-defined variants (user definitions may not redefine built-ins)."""
    for name in study.variant_defs:
        if name in VARIANTS:
            fail("variant_defs", name, f"a new name: built-in variants cannot be redefined ({', '.join(VARIANTS)})")
        if not name or not name.replace("_", "").replace("-", "").isalnum():
            fail("variant_defs", name, "a name of letters, digits, '_' and '-'")
    return {**VARIANTS, **study.variant_defs}


def validate_study(study: StudySpec) -> None:
    """Every setting of the study checked (the one wording of trainables/settings.py), then the checks
    across settings; per-trial checks happen in `expand`."""
    from trainables.data import DATASETS
    from trainables.folders import folder_name, is_folder_dataset
    from trainables.models import check_arch

    validate(study)  # normalises too: lists become tuples, an int given for a float a float
    if (
        not study.name[:1].isalnum()
        or not all(c.isascii() and (c.isalnum() or c in "_-.") for c in study.name)
        or len(study.name) > STUDY_NAME_MAX
    ):
        fail(
            "study",
            study.name,
            f"a plain folder name of at most {STUDY_NAME_MAX} characters: letters, digits, '_', '-' and '.', "
            "starting with a letter or digit (it names <results>/<study>/)",
        )
    for arch in study.archs:
        try:
            check_arch(arch)
        except ValueError as exc:
            raise ValueError(f"archs: {exc}") from None
    for dataset in study.datasets:
        if is_folder_dataset(dataset):
            try:
                folder_name(dataset)
            except ValueError as exc:
                raise ValueError(f"datasets: {exc}") from None
        elif dataset not in DATASETS:
            fail("datasets", dataset, "one of " + ", ".join(DATASETS) + ", imagefolder:<name> or imagenet")
    check_workers_archs(study.workers_per_trial, study.archs)
    variants = variant_table(study)
    for variant in study.variants:
        if variant not in variants:
            fail("variants", variant, "one of " + ", ".join(variants))
    g = study.gpus_per_trial
    if g is not None and g > 1 and g != int(g):
        fail("gpus_per_trial", g, "0, a fraction in (0, 1], or a whole number of GPUs")
    reserved = sorted(RESERVED_LOOP_KEYS & set(study.loop))
    if reserved:
        fail(
            "loop",
            reserved,
            "trial settings other than arch, dataset, seed, method, variant, policy and epochs (the study grid "
            "sets them) and data_dir (the study's --data-dir)",
        )
    _check_thresholds(study.thresholds)
    if study.calibrate:
        _check_calibrating(study)
    unknown_hooks = sorted(set(study.hooks) - TEST_HOOKS)
    if unknown_hooks:
        fail("hooks", unknown_hooks, f"test hooks among {', '.join(sorted(TEST_HOOKS))}")
    if "fail_at_epoch" in study.hooks and not str(study.hooks.get("fail_marker_dir", "")).startswith("/"):
        fail("hooks.fail_marker_dir", study.hooks.get("fail_marker_dir"), "an absolute directory")


# -------------------------------------------------------------------------------------------- expansion


def _accepts(method: str, options: dict[str, Any]) -> bool:
    from trainables.policies import policy_options

    return set(options) <= set(policy_options(method))


def _applies(method: str, variant: str, variants: dict[str, dict[str, Any]]) -> bool:
    """Fixed runs are always "baseline"; other variants apply to methods that accept their options."""
    if method == "fixed":
        return variant == "baseline"
    return _accepts(method, variants[variant])


THRESHOLD_OPTIONS: frozenset[str] = frozenset({"theta_stab", "theta_conf", "thresholds"})


def needs_calibration(method: str, options: dict[str, Any]) -> bool:
    """Whether a trial of a calibrating study takes its thresholds from the calibration: its method
    has thresholds and neither the study nor its variant sets them."""
    from trainables.policies import policy_options

    return {"theta_stab", "theta_conf"} <= set(policy_options(method)) and not THRESHOLD_OPTIONS & set(options)


def policy_options_for(study: StudySpec, method: str, arch: str, variant: str) -> dict[str, Any]:
    """Policy options of one trial: per-arch thresholds < study-wide options < the variant's.

    A study-wide theta_stab/theta_conf (--policy-opt) is the user's explicit choice for every arch,
    so it overrides a preset's per-arch thresholds; `thresholds` ("universal") given study-wide or by
    the variant replaces the per-arch thresholds altogether.
    """
    from trainables.policies import policy_options

    accepted = set(policy_options(method))
    variant_opts = variant_table(study)[variant]
    opts: dict[str, Any] = {}
    if (
        arch in study.thresholds
        and {"theta_stab", "theta_conf"} <= accepted
        and "thresholds" not in variant_opts
        and "thresholds" not in study.policy
    ):
        opts.update(study.thresholds[arch])
    opts.update({k: v for k, v in study.policy.items() if k in accepted})
    opts.update(variant_opts)
    return opts


def _cells(study: StudySpec) -> list[tuple[str, str, int, str, str, dict[str, Any]]]:
    """Validate `study`; its (arch, dataset, seed, method, variant, policy options) cells, in
    dataset, seed, arch, method, variant order."""
    from trainables.policies import POLICY_NAMES, policy_options

    validate_study(study)
    variants = variant_table(study)
    # A study-wide option applies to the methods that accept it (a preset's cooldown does not stop
    # `--methods fixed`); one that no registered policy knows is a typo.
    known = set().union(*(policy_options(m) for m in POLICY_NAMES))
    for key in study.policy:
        if key not in known:
            fail("policy", key, f"an option some policy accepts: {', '.join(sorted(known))}")
    for v in study.variants:
        if not any(_applies(m, v, variants) for m in study.methods):
            fail(
                "variants",
                v,
                f"a variant whose options {variants[v]} some method of the study ({', '.join(study.methods)}) accepts",
            )
    return [
        (arch, dataset, seed, method, variant, policy_options_for(study, method, arch, variant))
        for dataset in study.datasets
        for seed in study.seeds
        for arch in study.archs
        for method in study.methods
        for variant in study.variants
        if _applies(method, variant, variants)
    ]


Calibration = Callable[[str, str, dict[str, Any]], "dict[str, float] | None"]


def expand(study: StudySpec, calibration: Calibration | None = None) -> list[TrialSpec]:
    """Validate `study` and expand it to trial specs (dataset, seed, arch, method, variant order).

    Each trial's settings become a `TrialConfig` (checked in one place, trainables/config.py), so
    every bad value fails here with the field named. In a calibrating study
    (`calibrate=True`) a trial that takes its thresholds from the calibration gets them from
    `calibration(arch, method, options)`; it is left out while that returns None (or without one):
    `waiting_for_calibration` lists it.
    """
    specs: list[TrialSpec] = []
    for arch, dataset, seed, method, variant, opts in _cells(study):
        where = f"trial arch={arch} dataset={dataset} seed={seed} method={method} variant={variant}"
        if study.calibrate and needs_calibration(method, opts):
            found = calibration(arch, method, opts) if calibration is not None else None
            if found is None:
                continue
            opts = {**opts, **found}
        try:
            cfg = TrialConfig.from_dict(
                {
                    **study.loop,
                    "arch": arch,
                    "dataset": dataset,
                    "seed": seed,
                    "method": method,
                    "variant": variant,
                    "policy": opts,
                    "epochs": study.epochs,
                    "data_dir": study.data_dir,
                    "workers": workers_for(study.workers_per_trial, arch),
                }
            )
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from exc
        specs.append(TrialSpec(study=study.name, config=cfg))
    return specs


def waiting_for_calibration(study: StudySpec, calibration: Calibration | None = None) -> list[str]:
    """Labels of the trials `expand` leaves out until their thresholds are calibrated."""
    if not study.calibrate:
        return []
    return [
        trial_label(arch, dataset, seed, method, variant)
        for arch, dataset, seed, method, variant, opts in _cells(study)
        if needs_calibration(method, opts) and (calibration is None or calibration(arch, method, opts) is None)
    ]
