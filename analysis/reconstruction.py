"""The reconstruction study's table: readings of DEBA's lost equations ranked by trajectory distance.

A reading is one DEBA variant of a study (SPEC §4): a choice for each reconstructed element
(decision_rule, confidence_eps, signal_source, cooldown_on_noop, ...). Per (study, arch, dataset,
variant) over its seeds: the distance to the paper's path (mean and sample std), how many seeds
grew the batch (final B above b0), shrank it, or reached 729, the decisions taken, and the dAcc
and speedup against the fixed baseline (mean and std over the paired seeds). A reading that grows
for one seed and shrinks for two is not paper-like, whatever its mean distance: the growth column
shows that spread next to the rank.
"""

from __future__ import annotations

import pandas as pd

from analysis.configs import stored_configs
from trainables.policies import SIGNAL_OPTIONS, policy_options

# The reconstructed elements a reading may set, shown when they differ from the policy's default.
READING_OPTIONS: tuple[str, ...] = ("decision_rule", *SIGNAL_OPTIONS, "cooldown_on_noop", "cooldown", "thresholds")
KEYS = ["study", "arch", "dataset", "variant"]


def describe_reading(config: dict | None, method: str = "deba") -> str:
    """The reading's options (of a stored config, `analysis.configs`) that differ from the policy's
    defaults, plus the thresholds it used."""
    if config is None:
        return "?"
    policy = config.get("policy", {})
    defaults = policy_options(method)
    parts = [f"{k}={policy[k]}" for k in READING_OPTIONS if k in policy and policy[k] != defaults.get(k)]
    if policy.get("theta_stab") is not None and policy.get("theta_conf") is not None:
        parts.append(f"θ=({policy['theta_stab']:.3g}, {policy['theta_conf']:.3g})")
    return ", ".join(parts) or "defaults"


# A diverged run is a reading's result (its path ends there); a failed one runs again.
RANKED_STATUSES = ("completed", "diverged")


def reading_table(
    trajectory: pd.DataFrame, pairs: pd.DataFrame, runs: pd.DataFrame, method: str = "deba"
) -> pd.DataFrame:
    """Readings ranked by mean trajectory distance (per study, arch, dataset); see the module docstring.

    Only studies whose ``method`` runs come in two or more variants are readings studies; the
    table is empty otherwise. Only finished runs are ranked (RANKED_STATUSES): the partial path of a run
    still going (a live store) or of a failed one (it runs again) is not a reading's result.
    """
    t = trajectory[
        trajectory["method"].eq(method) & trajectory["n_epochs"].gt(0) & trajectory["status"].isin(RANKED_STATUSES)
    ]
    multi = t.groupby(["study", "arch", "dataset"])["variant"].transform("nunique") > 1
    t = t[multi]
    columns = KEYS + [
        "rank",
        "reading",
        "n_seeds",
        "distance_mean",
        "distance_std",
        "grew",
        "shrank",
        "reached_729",
        "final_bs",
        "n_increase",
        "n_rollback",
        "dacc_mean",
        "dacc_std",
        "speedup_pct",
        "speedup_std",
    ]
    if t.empty:
        return pd.DataFrame(columns=columns)
    configs = stored_configs(runs)
    p = pairs[pairs["method"].eq(method)]
    by_key = {k: g for k, g in p.groupby(KEYS, sort=False)}  # each reading's pairs, in their order
    rows = []
    for key, g in t.groupby(KEYS, sort=True):
        g = g.sort_values("seed")
        first = (g["study"].iloc[0], g["trial_id"].iloc[0])
        config = configs.get(first)
        reading = describe_reading(config, method)
        start = config["policy"]["b0"] if config is not None else policy_options(method)["b0"]
        pp = by_key.get(key, p.iloc[:0])
        n = len(g)
        rows.append(
            dict(zip(KEYS, key))
            | {
                "reading": reading,
                "n_seeds": n,
                "distance_mean": g["distance_oct"].mean(),
                "distance_std": g["distance_oct"].std(ddof=1),
                "grew": f"{int((g['final_bs'] > start).sum())}/{n}",
                "shrank": f"{int((g['final_bs'] < start).sum())}/{n}",
                "reached_729": f"{int(g['epoch_reach_729'].notna().sum())}/{n}",
                "final_bs": "/".join(str(int(b)) for b in g["final_bs"]),
                "n_increase": g["n_increase"].mean(),
                "n_rollback": g["n_rollback"].mean(),
                "dacc_mean": pp["dacc"].mean() if len(pp) else float("nan"),
                "dacc_std": pp["dacc"].std(ddof=1) if len(pp) > 1 else float("nan"),
                "speedup_pct": pp["speedup_pct"].mean() if len(pp) else float("nan"),
                "speedup_std": pp["speedup_pct"].std(ddof=1) if len(pp) > 1 else float("nan"),
            }
        )
    out = pd.DataFrame(rows)
    out = out.sort_values(["study", "arch", "dataset", "distance_mean", "variant"], kind="stable")
    out["rank"] = out.groupby(["study", "arch", "dataset"]).cumcount() + 1
    return out[columns].reset_index(drop=True)
