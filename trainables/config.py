"""One trial's configuration: `TrialConfig`, a frozen typed dataclass, checked in one place.

    cfg = TrialConfig(arch="resnet18", dataset="cifar10", method="deba", policy={"cooldown": 5})
    cfg.trial_id()                 # 12 hex digits of its identity (execution settings and epochs left out)
    TrialConfig.from_dict(d)       # unknown or missing fields refused, naming them
    cfg.to_dict()                  # plain JSON-able dict (what checkpoints and the runs table hold)

Every field carries its help text, allowed values and role (trainables/settings.py): the
command lines of `python -m trainables.run` and `run_grid.py` are generated from these fields,
so a new setting is one field here. Execution settings (`execution=True`: device, threads,
compile, ...) change how a trial runs, not what it computes: they are no part of its identity,
so moving a study to other hardware keeps its finished trials. `epochs` is not part of it either:
more epochs continue the same trial (its first epochs are identical).

Torch is imported only to check an arch or dataset name against the registries.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from trainables.config_schema import (
    CONFIG_SCHEMA,
    PACKAGE_VERSION_KEY,
    SCHEMA_1_POLICY_DEFAULTS,
    SCHEMA_1_TRIAL_DEFAULTS,
    SCHEMA_KEY,
)
from trainables.settings import MISSING, build, defaults, fail, fields_of, setting, validate

# Values of the `compile` field: off, torch.compile's default mode, or a torch.compile mode name.
COMPILE_MODES: tuple[Any, ...] = (False, True, "reduce-overhead", "max-autotune")
AUTO_ON_OFF: tuple[Any, ...] = ("auto", True, False)
# Training augmentation: random crop (4 px zero padding) with or without a horizontal flip; auto = the
# dataset's default (trainables/data.py DEFAULT_AUGMENTATION).
# resized_crop_flip (random-resized crop + flip) is the folder datasets' default (trainables/streamed.py).
AUGMENT_CHOICES: tuple[str, ...] = ("auto", "crop_flip", "crop", "none", "resized_crop_flip")
SEED_MAX = 2**32 - 1  # numpy's seeds are 32-bit


@dataclass(frozen=True)
class TrialConfig:
    """The settings of one trial (SPEC §3 for the study's defaults)."""

    arch: str = setting(
        MISSING,
        "architecture: a registry name (resnet18, resnet50, densenet121, efficientnet_b0, "
        "mobilenetv3, vit_b16, tiny_cnn, tiny_mlp) or timm/<name> for any timm model",
        kind="str",
    )
    dataset: str = setting(
        MISSING,
        "dataset: cifar10, cifar100, fashion_mnist, digits, synthetic, or a folder of images streamed through "
        "Ray Data: imagefolder:<name> (DIR/<name>/{train,val}/<class>/*.png|jpg) or imagenet",
        kind="str",
    )
    seed: int = setting(
        0, "seed of the weights, the data order and the augmentation", kind="int", minimum=0, maximum=SEED_MAX
    )
    method: str = setting("fixed", "batch-size policy: fixed, deba, adabatch, divebatch, gns", kind="str")
    variant: str = setting(
        "baseline", "name of the method's configuration (baseline or an ablation's name)", kind="str"
    )
    policy: dict = setting(
        {}, "the policy's options (policy_options(method) lists them with their defaults)", kind="mapping"
    )
    epochs: int = setting(100, "epochs to train", kind="int", minimum=1)
    lr: float = setting(
        0.01, "SGD learning rate (the paper's: fixed, no schedule)", kind="float", minimum=0.0, strict=True
    )
    momentum: float = setting(0.9, "SGD momentum", kind="float", minimum=0.0, below=1.0)
    weight_decay: float = setting(5e-4, "SGD weight decay", kind="float", minimum=0.0)
    data_dir: str | None = setting(
        None,
        "directory with local dataset copies (default $DEBA_DATA_DIR or ~/.cache/deba/data)",
        kind="path",
        nullable=True,
        execution=True,
    )
    download: bool = setting(True, "download missing dataset files when online", kind="bool", execution=True)
    train_limit: int | None = setting(
        None, "train on a seeded random subset of this many samples", kind="int", minimum=1, nullable=True
    )
    test_limit: int | None = setting(
        None, "evaluate on a seeded random subset of this many samples", kind="int", minimum=1, nullable=True
    )
    subset_seed: int | None = setting(
        0,
        "seed of the train_limit/test_limit subsets, the same for every trial seed (null: the trial seed); "
        "recorded as null when no subset is drawn",
        kind="int",
        minimum=0,
        maximum=SEED_MAX,
        nullable=True,
        neutral=None,
    )
    eval_batch_size: int = setting(1024, "batch size of the evaluation", kind="int", minimum=1, execution=True)
    augment: str = setting(
        "auto",
        "training augmentation: crop_flip, crop, none; auto = the dataset's default (crop for digits, else crop_flip)",
        kind="choice",
        choices=AUGMENT_CHOICES,
    )
    device: str = setting(
        "auto", "auto = cuda when available", kind="choice", choices=("auto", "cpu", "cuda"), execution=True
    )
    amp: str = setting(
        "auto", "mixed precision: auto = bf16 on CUDA, off on CPU", kind="choice", choices=("auto", "bf16", "off")
    )
    channels_last: Any = setting(
        "auto",
        "channels_last memory format (auto = on; measured faster on CPU too)",
        kind="choice",
        choices=AUTO_ON_OFF,
        execution=True,
    )
    fused_sgd: Any = setting(
        "auto", "fused SGD kernel (auto = on CUDA)", kind="choice", choices=AUTO_ON_OFF, execution=True
    )
    compile: Any = setting(
        False,
        "torch.compile the model: true (default mode) or a mode name",
        kind="choice",
        choices=COMPILE_MODES,
        execution=True,
        const="true",
    )
    cudnn_benchmark: Any = setting(
        "auto",
        "torch.backends.cudnn.benchmark on CUDA (auto = off, unmeasured)",
        kind="choice",
        choices=AUTO_ON_OFF,
        execution=True,
    )
    threads: int | None = setting(
        None, "torch CPU threads (default: torch's)", kind="int", minimum=1, nullable=True, execution=True
    )
    record_epoch_mean: bool = setting(
        False,
        "also record the epoch-mean gradient's variance and norm, whatever "
        "the signal source (one parameter-sized buffer)",
        kind="bool",
    )
    timm_input: str | None = setting(
        None,
        "how a timm/ arch meets 32x32: auto, native, resize=N or "
        "img_size=32[,patch_size=P][,window_size=W] (trainables/timm_archs.py); "
        "auto is resolved and recorded",
        kind="path",
        nullable=True,
        neutral=None,
    )
    workers: int = setting(
        1,
        "data-parallel workers (Ray Train DDP ranks) of the trial; the policy adapts the global batch "
        "(trainables/data_parallel.py); set per arch by the study's workers_per_trial",
        kind="int",
        minimum=1,
        maximum=1024,
        neutral=1,
        cli=False,
    )

    batchnorm: str = setting(
        "global",
        "BatchNorm of a data-parallel trial (workers > 1): global = batch statistics over the global batch, "
        "summed over the workers (the one-worker computation); per_worker = each worker's own (DDP's default, "
        "no extra communication); recorded as global when workers = 1",
        kind="choice",
        choices=("global", "per_worker"),
        neutral="global",
    )

    # Folder datasets (trainables/folders.py, trainables/streamed.py); each setting is neutral for the others.
    input_size: int | None = setting(
        None,
        "side in pixels of a folder dataset's images once resized (default 32: the registry's archs are built "
        "for 32x32); recorded; null for the built-in datasets, which are 32x32",
        kind="int",
        minimum=8,
        maximum=1024,
        nullable=True,
        neutral=None,
    )
    data_loader: str = setting(
        "auto",
        "how a folder dataset is fed: stream (Ray Data, any size) or resident (decoded once onto the device); "
        "auto = stream; built-in datasets are always resident",
        kind="choice",
        choices=("auto", "stream", "resident"),
        execution=True,
        neutral="auto",
    )
    data_cpus: int = setting(
        1,
        "CPUs of a streamed dataset's Ray Data pipeline (decode, augment, normalise)",
        kind="int",
        minimum=1,
        execution=True,
        neutral=1,
    )
    skip_unreadable: bool = setting(
        False,
        "train a folder dataset without its unreadable files (each is named) instead of refusing it",
        kind="bool",
        execution=True,
        neutral=False,
    )

    def __post_init__(self) -> None:
        from trainables import timm_archs
        from trainables.data import DATASETS, DEFAULT_AUGMENTATION, NUM_CLASSES
        from trainables.folder_config import FOLDER_AUGMENTATION, check_data_settings
        from trainables.folders import is_folder_dataset
        from trainables.models import check_arch
        from trainables.policies import POLICY_NAMES, policy_context_check, policy_options_object
        from trainables.policies.variants import VARIANTS

        if isinstance(self.augment, bool):  # the meaning before per-dataset defaults: crop + flip, or nothing
            object.__setattr__(self, "augment", "crop_flip" if self.augment else "none")
        if self.policy is None:
            object.__setattr__(self, "policy", {})
        validate(self)
        check_arch(self.arch)
        folder = is_folder_dataset(self.dataset)
        if not folder and self.dataset not in DATASETS:
            fail(
                "dataset",
                self.dataset,
                "one of " + ", ".join(map(repr, DATASETS)) + ", 'imagefolder:<name>' or 'imagenet'",
            )
        if self.method not in POLICY_NAMES:
            fail("method", self.method, "one of " + ", ".join(map(repr, POLICY_NAMES)))
        if "arch" in self.policy:
            fail("policy", self.policy, "policy options without 'arch' (the trial's arch is used)")
        if self.dataset == "synthetic" or (self.train_limit is None and self.test_limit is None):
            object.__setattr__(self, "subset_seed", None)  # no subset is drawn: nothing to seed
        if self.augment == "auto":
            object.__setattr__(self, "augment", FOLDER_AUGMENTATION if folder else DEFAULT_AUGMENTATION[self.dataset])
        check_data_settings(self, folder)  # input size, loader and augmentation against the dataset's kind
        if timm_archs.is_timm(self.arch):  # the input choice is recorded, never left to "auto" at run time
            choice = timm_archs.resolve_input(self.arch, NUM_CLASSES[self.dataset], self.timm_input or "auto")
            object.__setattr__(self, "timm_input", choice)
        elif self.timm_input is not None:
            fail(
                "timm_input",
                self.timm_input,
                f"null for the registry arch {self.arch!r} (its input adaptation is fixed: trainables/models.py)",
            )
        options = policy_options_object(self.method, self.policy)
        policy_context_check(self.method, options, arch=self.arch, dataset=self.dataset)
        for name, value in VARIANTS.get(self.variant, {}).items():  # a built-in variant's name means its options
            got = getattr(options, name, MISSING)
            if got is MISSING or got != value:
                fail(
                    "variant",
                    self.variant,
                    f"a variant whose options hold: {self.variant!r} sets {name}={value!r}, which "
                    + (f"policy {self.method!r} does not take" if got is MISSING else f"this trial has as {got!r}")
                    + " (drop the variant name, or the option that differs)",
                )
        object.__setattr__(self, "_options", options)
        if self.workers == 1:  # one worker's BatchNorm is the global batch's: one identity for both spellings
            object.__setattr__(self, "batchnorm", "global")
        if self.workers > 1:
            from trainables.data_parallel import check_data_parallel

            check_data_parallel(self, options)
        # The policy as every option's checked value, defaults included (what is stored and what ran):
        # `{"alpha": 1.5}` and `{}`, or `alpha=2` and `alpha=2.0`, are one config.
        object.__setattr__(self, "policy", {f.name: getattr(options, f.name) for f in fields_of(options)})

    # ------------------------------------------------------------------ conversions
    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrialConfig:
        """A config from a plain mapping; unknown or missing fields refused, naming them."""
        return build(cls, data, "config field")

    @classmethod
    def from_stored(cls, document: Mapping[str, Any]) -> TrialConfig:
        """The config of a stored config document of any schema (`resolve_stored`)."""
        return cls.from_dict(resolve_stored(document))

    @classmethod
    def coerce(cls, config: TrialConfig | Mapping[str, Any]) -> TrialConfig:
        """`config` itself, or the config of a mapping."""
        return config if isinstance(config, TrialConfig) else cls.from_dict(config)

    def to_dict(self) -> dict[str, Any]:
        """Every field as a plain JSON-able dict."""
        return {
            f.name: (dict(getattr(self, f.name)) if f.name == "policy" else getattr(self, f.name))
            for f in fields_of(self)
        }

    def stored(self) -> dict[str, Any]:
        """The document a runs row and a checkpoint hold: every field, the config schema and the package version."""
        return {**self.to_dict(), SCHEMA_KEY: CONFIG_SCHEMA, PACKAGE_VERSION_KEY: PACKAGE_VERSION}

    def __getitem__(self, name: str) -> Any:
        """Read a field by name (`cfg["lr"]`), as configs read when they were plain dicts."""
        if not isinstance(name, str) or name.startswith("_") or not hasattr(self, name):
            raise KeyError(name)
        return getattr(self, name)

    def get(self, name: str, default: Any = None) -> Any:
        """`cfg[name]`, or `default` for a name that is no field."""
        try:
            return self[name]
        except KeyError:
            return default

    def replace(self, **changes: Any) -> TrialConfig:
        """A copy with some fields changed (checked again)."""
        return dataclasses.replace(self, **changes)

    @property
    def options(self) -> Any:
        """The policy's options, typed (trainables/policies/options.py)."""
        return self._options  # type: ignore[attr-defined]

    # ------------------------------------------------------------------ identity
    def trial_id(self) -> str:
        """Stable 12-hex-digit id of the identity."""
        return trial_id_of(self.to_dict())


EXECUTION_FIELDS: frozenset[str] = frozenset(f.name for f in fields_of(TrialConfig) if f.metadata["execution"])
# What a checkpoint must agree on to load into a loop (epochs may grow; execution settings may change).
IDENTITY_FIELDS: tuple[str, ...] = tuple(
    f.name for f in fields_of(TrialConfig) if not f.metadata["execution"] and f.name != "epochs"
)
DEFAULT_CONFIG: dict[str, Any] = defaults(TrialConfig)
_TRIAL_FIELDS = {f.name: f for f in fields_of(TrialConfig)}


def _package_version() -> str:
    try:
        return importlib.metadata.version("deba-orchestrator")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


PACKAGE_VERSION = _package_version()


# ------------------------------------------------------------------------------------------ identity
#
# trial_id = the first 12 hex digits of sha1 over the canonical JSON of `identity_view(config)`: every
# trial setting but the execution settings and epochs, and every policy option, each left out while it
# holds its neutral value. A setting's neutral value is the one that reproduces the behaviour from before
# it existed: declared on the setting (`setting(..., neutral=)`) for every setting added after config
# schema 1; a schema-1 policy option's is its schema-1 default (trainables/config_schema.py); a schema-1
# trial setting has none (always in the view). That is exactly what schema 1 hashed, so stored ids stay
# valid; a new setting at its neutral value renames nothing; a changed default renames only new trials
# (their value differs from the neutral one), never the meaning of a stored trial.


def _same(a: Any, b: Any) -> bool:
    """Equal values of one kind (True is not 1, 1.0 is 1)."""
    return a == b and isinstance(a, bool) == isinstance(b, bool)


def policy_neutral(method: str, name: str) -> Any:
    """The neutral value of policy `method`'s option `name` (see above); LookupError when it has none."""
    from trainables.policies import POLICIES

    field = {f.name: f for f in fields_of(POLICIES[method].Options)}.get(name)
    if field is not None and field.metadata["neutral"] is not MISSING:
        return field.metadata["neutral"]
    if name in SCHEMA_1_POLICY_DEFAULTS.get(method, {}):
        return SCHEMA_1_POLICY_DEFAULTS[method][name]
    raise LookupError(f"policy {method!r} option {name!r} has no neutral value: declare setting(..., neutral=)")


def identity_view(config: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a full config mapping the trial id hashes (see above)."""
    view: dict[str, Any] = {}
    for name in IDENTITY_FIELDS:
        value = config[name]
        if name == "policy":
            view[name] = {k: v for k, v in value.items() if not _same(v, policy_neutral(config["method"], k))}
            continue
        neutral = _TRIAL_FIELDS[name].metadata["neutral"]
        if neutral is MISSING or not _same(value, neutral):
            view[name] = value
    return view


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and no whitespace: equal configs give equal strings."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)


def trial_id_of(config: Mapping[str, Any]) -> str:
    """Stable 12-hex-digit id of a full config mapping (TrialConfig.to_dict())."""
    return hashlib.sha1(canonical_json(identity_view(config)).encode()).hexdigest()[:12]


def resolve_stored(document: Mapping[str, Any]) -> dict[str, Any]:
    """The full config a stored config document (a runs row's config_json, a checkpoint's config) ran
    with, whatever schema wrote it: a setting missing from it takes its neutral value (the behaviour
    before it existed; a schema-1 policy option: its schema-1 default), a schema-1 trial setting
    missing from an older config its schema-1 default. Today's defaults are never filled in. Keys
    this version does not know are kept (TrialConfig refuses them, naming them)."""
    schema = document.get(SCHEMA_KEY, 1)
    if isinstance(schema, bool) or not isinstance(schema, int) or not 1 <= schema <= CONFIG_SCHEMA:
        fail(SCHEMA_KEY, schema, f"1..{CONFIG_SCHEMA} (a config written by a newer version of the tool?)")
    out = {k: v for k, v in document.items() if k not in (SCHEMA_KEY, PACKAGE_VERSION_KEY)}
    for name, field in _TRIAL_FIELDS.items():
        if name in out or name == "policy":
            continue
        if field.metadata["neutral"] is not MISSING:
            out[name] = field.metadata["neutral"]
        elif name in SCHEMA_1_TRIAL_DEFAULTS:
            out[name] = SCHEMA_1_TRIAL_DEFAULTS[name]
    policy = dict(out.get("policy") or {})
    method = out.get("method")
    from trainables.policies import POLICIES

    if method in POLICIES:
        for f in fields_of(POLICIES[method].Options):
            if f.name not in policy:
                policy[f.name] = policy_neutral(method, f.name)
    out["policy"] = policy
    return out


def validate_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The full config dict (defaults filled in, values normalised) of a mapping; ValueError names a
    bad field and its allowed values."""
    return TrialConfig.from_dict(config).to_dict()
