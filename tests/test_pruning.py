"""Disk kept by finished trials: only the final checkpoint, and experiment folders once their trials are done."""

from __future__ import annotations

import json
import zipfile

from orchestrator.checkpoints import find_checkpoints, prune_finished


def _checkpoint(root, experiment: str, trial: str, index: int, epoch: int) -> None:
    folder = root / experiment / f"tiny_cnn-digits-s0-fixed-baseline-{trial}" / f"checkpoint_{index:06d}"
    folder.mkdir(parents=True)
    (folder / "checkpoint.json").write_text(json.dumps({"epoch": epoch}))
    with zipfile.ZipFile(folder / "state.pt", "w") as z:  # intact(): a complete archive
        z.writestr("state/data.pkl", b"x")


def test_finished_trials_keep_their_final_checkpoint_and_done_experiments_go(tmp_path):
    t1, t2, t3 = "aaaaaaaaaaa1", "aaaaaaaaaaa2", "aaaaaaaaaaa3"
    _checkpoint(tmp_path, "exp-a", t1, 0, 1)
    _checkpoint(tmp_path, "exp-a", t1, 1, 2)
    _checkpoint(tmp_path, "exp-a", t2, 0, 2)  # t2's final checkpoint keeps exp-a
    _checkpoint(tmp_path, "exp-b", t1, 2, 3)  # t1's final checkpoint
    _checkpoint(tmp_path, "exp-c", t3, 0, 1)  # t3 still runs
    (tmp_path / "exp-d" / "tiny_cnn-digits-s0-fixed-baseline-aaaaaaaaaaa1").mkdir(parents=True)  # no checkpoint
    (tmp_path / "exp-other").mkdir()  # another study's experiment: not listed, never touched
    experiments = {"exp-a": [t1, t2], "exp-b": [t1], "exp-c": [t3], "exp-d": [t1]}
    pruned = prune_finished(str(tmp_path), experiments, finished={t1, t2})
    assert pruned.experiments == ("exp-d",) and len(pruned.checkpoints) == 2
    left = find_checkpoints(str(tmp_path), {t1, t2, t3})
    assert [(c.experiment, c.epoch) for c in left[t1]] == [("exp-b", 3)]
    assert [(c.experiment, c.epoch) for c in left[t2]] == [("exp-a", 2)]
    assert [(c.experiment, c.epoch) for c in left[t3]] == [("exp-c", 1)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exp-a", "exp-b", "exp-c", "exp-other"]
    # Once t3 is finished too, nothing more goes: every experiment left holds a final checkpoint.
    assert prune_finished(str(tmp_path), experiments, finished={t1, t2, t3}).experiments == ()
