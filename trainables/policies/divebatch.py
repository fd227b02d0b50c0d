"""DiveBatch (arXiv 2509.16173, authors' code): grow B from the gradient diversity (SPEC §5)."""

from __future__ import annotations

import math
from typing import Any

from trainables.policies.base import MEASURE_PER_SAMPLE, MEASURE_TWO_BATCH, BatchSizePolicy
from trainables.policies.noise import simple_noise_scale
from trainables.policies.options import DiveBatchOptions, PolicyOptions

# The paper's delta per dataset; any other dataset (digits, synthetic, unknown) uses DEFAULT_DELTA.
DATASET_DELTA: dict[str, float] = {"cifar10": 0.1, "cifar100": 0.01}
DEFAULT_DELTA = 0.1  # [choice] for datasets the paper did not use: 10-class data, as CIFAR-10


def divebatch_update(batch: int, n_delta: float, delta: float, b_max: int) -> int:
    """B' = int(min(max(delta * n * Delta, B), B_max)); a NaN/inf n*Delta gives B_max (authors' code)."""
    if not math.isfinite(n_delta):
        return b_max
    return int(min(max(delta * n_delta, batch), b_max))


class DiveBatchPolicy(BatchSizePolicy):
    """Every `resize_every` epochs (T = 20) measure the gradient diversity during that epoch, then
    B = int(min(max(delta * n * Delta, B), b_max)): never decreasing, NaN/inf -> b_max.

    Options:
    - resize_every (T, 20); b_max (2048); b0 (64, the study's B_0).
    - delta: None = by dataset (0.1 cifar10, 0.01 cifar100, DEFAULT_DELTA = 0.1 otherwise [choice]);
      a number overrides. The dataset reaches the policy as the `dataset` constructor argument.
    - estimator [choice, recorded in the `estimator` column by the loop]:
      "per_sample": Delta = sum_i |g_i|^2 / |sum_i g_i|^2 over the epoch's samples, per-sample norms
      exact (torch.func) for models without BatchNorm; with BatchNorm, the authors' approximation
      (per-sample norms with BatchNorm in eval mode); n*Delta uses n = the number of samples summed
      (`n_samples`: steps x B; the authors multiply by the dataset size instead, a relative
      difference below B/n).
      "noise_scale": n*Delta = 1 + B_simple, B_simple = tr(Sigma)/|G|^2 from the epoch's two-batch
      statistics (no EMA: one measuring epoch); recorded grad_diversity = (1 + B_simple)/n_samples.
    - diversity_sum ("training"): the per_sample estimator's denominator |sum_i g_i|^2 [choice].
      "training" = the sum of the training-step gradients (authors' code; under BatchNorm it mixes
      train-mode sums with eval-mode per-sample norms: one check, tiny_cnn on digits after 2 epochs
      at fixed weights, gave n*Delta = 553 against 33 eval-consistent and 73 from two batches);
      "per_sample" = the sum of the per-sample pass's own gradients
      (numerator and denominator from the same eval-mode network). Identical without BatchNorm.
    - per_sample_chunk (32): samples per torch.func chunk, bounding memory to chunk x parameters.
    - lr_scaling="linear" is the paper's optional linear lr scaling at each resize.
    Nothing is measured on other epochs, nor once B = b_max (B can only stay there) [choice].
    Both estimators record grad_diversity and noise_scale (= n*Delta - 1), so they can be compared.
    """

    name = "divebatch"
    Options = DiveBatchOptions
    options: DiveBatchOptions

    def __init__(
        self, arch: str | None = None, dataset: str | None = None, options: PolicyOptions | None = None
    ) -> None:
        super().__init__(arch, dataset, options)
        opts = self.options
        self.delta: float = float(
            opts.delta if opts.delta is not None else DATASET_DELTA.get(dataset or "", DEFAULT_DELTA)
        )

    def is_resize_epoch(self, epoch: int) -> bool:
        """Whether `epoch` measures the diversity and resizes after it (epochs T, 2T, ...)."""
        return epoch % self.options.resize_every == 0

    def method_measurements(self, epoch: int) -> frozenset[str]:
        """The estimator's statistic on resize epochs below b_max; nothing otherwise."""
        if not self.is_resize_epoch(epoch) or self.batch_size >= self.options.b_max:
            return frozenset()
        return frozenset({MEASURE_PER_SAMPLE if self.options.estimator == "per_sample" else MEASURE_TWO_BATCH})

    def measure_settings(self) -> dict[str, int]:
        """Adds the per-sample chunk size and the diversity denominator."""
        return {
            **super().measure_settings(),
            "per_sample_chunk": int(self.options.per_sample_chunk),
            "diversity_sum": self.options.diversity_sum,
        }

    def _n_delta(self, epoch: int, inputs: dict[str, Any]) -> tuple[float, float, float]:
        """(Delta, n*Delta, B_simple) from the measured inputs of a resize epoch."""
        per_sample = self.options.estimator == "per_sample"
        keys = ("grad_diversity", "n_samples") if per_sample else ("noise_trace", "noise_sqnorm", "n_samples")
        missing = [k for k in keys if inputs.get(k) is None]
        if missing:
            need = MEASURE_PER_SAMPLE if per_sample else MEASURE_TWO_BATCH
            raise ValueError(f"divebatch at epoch {epoch} needs {', '.join(missing)} (measurement {need!r})")
        n = int(inputs["n_samples"])
        if per_sample:
            diversity = float(inputs["grad_diversity"])
            n_delta = n * diversity
            return diversity, n_delta, n_delta - 1.0
        b_simple = simple_noise_scale(float(inputs["noise_trace"]), float(inputs["noise_sqnorm"]))
        return (1.0 + b_simple) / n, 1.0 + b_simple, b_simple

    def decide(self, epoch: int, signals: Any, **inputs: Any) -> dict[str, Any]:
        """Resize after a measuring epoch; hold otherwise."""
        batch = self.batch_size
        if not self.method_measurements(epoch):
            return {"decision": "hold", "batch_size": batch}
        diversity, n_delta, b_simple = self._n_delta(epoch, inputs)
        new_batch = divebatch_update(batch, n_delta, self.delta, self.options.b_max)
        return {
            "decision": "increase" if new_batch > batch else "hold",
            "batch_size": new_batch,
            "grad_diversity": diversity,
            "noise_scale": b_simple,
        }
