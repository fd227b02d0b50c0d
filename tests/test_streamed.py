"""Folder datasets: the checks before Ray, the export command, the streamed rows against the resident
loader's, and (slow) whole trials streamed through Ray Data. Every test writes its own tiny folder."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from trainables.config import TrialConfig, identity_view
from trainables.data import GpuLoader
from trainables.folders import FolderError, folder_name, scan_folder
from trainables.streamed import (
    StreamLoader,
    decode_block,
    decode_images,
    resized_crop_box,
    shard_positions,
    stats_from_histograms,
    trial_bundles,
)

REPO = Path(__file__).resolve().parents[1]
TIMING = {"epoch_time_s", "eval_time_s", "wall_time_s", "samples_per_s", "peak_mem_mb", "measure_time_s"}


def make_folder(root: Path, name: str = "tiny", classes: int = 3, train: int = 12, val: int = 4, size=(32, 32)) -> Path:
    """DIR/<name>/{train,val}/<class>/<i>.png of seeded random RGB images (a few of them JPEGs)."""
    rng = np.random.default_rng(0)
    for split, count in (("train", train), ("val", val)):
        for k in range(classes):
            folder = root / name / split / f"c{k}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
                pixels[..., k] //= 2  # a class signal
                suffix = "jpg" if i % 5 == 4 else "png"  # JPEGs too: decoded the same way on both paths
                Image.fromarray(pixels).save(folder / f"{i:03d}.{suffix}")
    return root / name


# ------------------------------------------------------------------------------ checks before Ray
def test_a_good_folder_is_indexed_in_class_then_file_order(tmp_path: Path) -> None:
    make_folder(tmp_path)
    (tmp_path / "tiny" / "train" / "c0" / "README.txt").write_text("not a sample")
    index = scan_folder("imagefolder:tiny", str(tmp_path))
    assert index.classes == ("c0", "c1", "c2") and len(index.train) == 36 and len(index.val) == 12
    assert list(index.train.labels) == sorted(index.train.labels)
    assert index.train.paths[0].endswith("train/c0/000.png") and index.train.paths[4].endswith("004.jpg")


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda r: None, r"folder .*nothing does not exist"),
        (lambda r: __import__("shutil").rmtree(r / "tiny" / "val"), r"tiny/val/ is missing"),
        (lambda r: [__import__("shutil").rmtree(p) for p in (r / "tiny" / "train").iterdir()], "no classes"),
        (lambda r: [os.remove(p) for p in (r / "tiny" / "val").rglob("*.png")], "the val split is empty"),
        (lambda r: [os.remove(p) for p in (r / "tiny" / "train" / "c1").iterdir()], "without training images: c1"),
        (lambda r: (r / "tiny" / "val" / "zz").mkdir(), "classes that train/ lacks: zz"),
    ],
)
def test_a_malformed_folder_is_refused_naming_what_is_wrong(tmp_path: Path, damage, message: str) -> None:
    make_folder(tmp_path)
    damage(tmp_path)
    dataset = "imagefolder:nothing" if "nothing" in message else "imagefolder:tiny"
    with pytest.raises(FolderError, match=message):
        scan_folder(dataset, str(tmp_path))


def test_unreadable_files_are_each_named_and_skipped_only_when_allowed(tmp_path: Path) -> None:
    root = make_folder(tmp_path)
    bad = [root / "train" / "c0" / "000.png", root / "val" / "c2" / "001.png"]  # a broken PNG, a GIF
    bad[0].write_bytes(b"not a png")
    Image.new("RGB", (8, 8)).save(bad[1], format="GIF")  # readable, but no PNG/JPEG
    with pytest.raises(FolderError, match="2 unreadable file") as err:
        scan_folder("imagefolder:tiny", str(tmp_path))
    assert all(str(p) in str(err.value) for p in bad) and "--skip-unreadable true" in str(err.value)
    index = scan_folder("imagefolder:tiny", str(tmp_path), skip_unreadable=True)
    assert len(index.train) == 35 and len(index.val) == 11 and index.skipped == tuple(sorted(map(str, bad)))
    from trainables.folders import check_study_folders

    (note,) = check_study_folders(("imagefolder:tiny", "digits"), str(tmp_path), skip_unreadable=True)
    assert "2 unreadable file(s) left out" in note and all(str(p) in note for p in bad)


def test_trainables_run_refuses_a_malformed_folder_before_ray(tmp_path: Path) -> None:
    make_folder(tmp_path)
    (tmp_path / "tiny" / "train" / "c1" / "003.png").write_bytes(b"")
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_ADDRESS": "", "RAY_USAGE_STATS_ENABLED": "0"}
    cmd = [sys.executable, "-m", "trainables.run", "--arch", "tiny_cnn", "--dataset", "imagefolder:tiny"]
    out = subprocess.run([*cmd, "--data-dir", str(tmp_path), "--epochs", "1"], capture_output=True, text=True, env=env)
    assert out.returncode == 2 and "train/c1/003.png" in out.stderr and "Ray" not in out.stderr


def test_folder_settings_are_recorded_and_leave_builtin_trial_ids_alone() -> None:
    base = TrialConfig(arch="tiny_cnn", dataset="digits")
    assert TrialConfig(arch="tiny_cnn", dataset="digits", input_size=32).trial_id() == base.trial_id()
    assert base.input_size is None and "input_size" not in identity_view(base.to_dict())
    cfg = TrialConfig(arch="tiny_cnn", dataset="imagefolder:tiny")
    assert (cfg.input_size, cfg.augment, cfg.data_loader) == (32, "resized_crop_flip", "auto")
    assert cfg.replace(input_size=64).trial_id() != cfg.trial_id()  # the input size is part of the identity
    assert cfg.replace(data_dir="/elsewhere", data_cpus=3).trial_id() == cfg.trial_id()  # the path is not
    for bad, match in [
        ({"dataset": "imagefolder:a/b"}, "one folder name"),
        ({"dataset": "digits", "input_size": 64}, "input_size=64"),
        ({"dataset": "digits", "augment": "resized_crop_flip"}, "built-in dataset"),
        ({"dataset": "digits", "data_loader": "stream"}, "built-in dataset"),
        ({"dataset": "imagefolder:a", "arch": "tiny_mlp", "input_size": 64}, "head assumes 32x32"),
        ({"dataset": "imagefolder:a", "data_loader": "resident"}, "random-resized crop is done while streaming"),
    ]:
        with pytest.raises(ValueError, match=match):
            TrialConfig(**{"arch": "tiny_cnn", **bad})
    assert folder_name("imagenet") == "imagenet"


# ------------------------------------------------------------------------------ pure pieces
def test_worker_shards_of_a_step_are_the_single_worker_batch() -> None:
    whole = shard_positions(40, 8, 0, 1)
    assert list(whole) == list(range(40))
    shards = [shard_positions(43, 8, r, 4).reshape(-1, 2) for r in range(4)]  # 43 rows: 5 whole batches
    steps = np.concatenate(shards, axis=1)  # step i: the 4 workers' rows side by side
    assert steps.tolist() == np.arange(40).reshape(5, 8).tolist()
    with pytest.raises(ValueError, match="multiple of the 3 workers"):
        shard_positions(40, 8, 0, 3)


def test_two_workers_stream_the_halves_of_every_single_worker_batch(tmp_path: Path) -> None:
    index = scan_folder("imagefolder:tiny", str(make_folder(tmp_path).parent))
    loader = StreamLoader(index.train, 32, (0.5,) * 3, (0.25,) * 3, "cpu", augment="crop_flip")
    whole = loader.epoch_rows(8, torch.Generator().manual_seed(3))
    halves = [loader.epoch_rows(8, torch.Generator().manual_seed(3), rank=r, world=2) for r in range(2)]
    for key, value in whole.items():
        steps = np.concatenate([h[key].reshape(-1, 4) for h in halves], axis=1).reshape(-1)
        assert steps.tolist() == value.tolist(), key


def test_resized_crop_boxes_stay_inside_the_image() -> None:
    rng = np.random.default_rng(1)
    for _ in range(500):
        w, h = (int(v) for v in rng.integers(1, 300, 2))
        left, top, right, bottom = resized_crop_box(w, h, rng.random(4))
        assert 0 <= left < right <= w and 0 <= top < bottom <= h


def test_blocks_stay_small_at_large_input_sizes() -> None:
    from trainables.streamed import block_rows

    assert block_rows(60_000, 2) == 1024 and block_rows(100, 2) == 13
    assert block_rows(1_281_167, 8, 224) * 4 * 3 * 224 * 224 <= 64 * 2**20


def test_trial_bundles_give_a_streamed_study_a_data_bundle() -> None:
    res = {"cpu": 1.0, "gpu": 0.0}
    configs = [{"dataset": "imagefolder:a", "data_loader": "auto", "data_cpus": 2}, {"dataset": "digits"}]
    assert trial_bundles(configs, res) == [{"CPU": 1.0, "GPU": 0.0}, {"CPU": 2.0}]
    assert trial_bundles([{"dataset": "digits"}], res) == [{"CPU": 1.0, "GPU": 0.0}]


@pytest.mark.parametrize("augment", ["none", "crop", "crop_flip"])
def test_streamed_rows_equal_the_resident_loaders_bit_for_bit(tmp_path: Path, augment: str) -> None:
    """The same images in the same order: the draws and the pixels of the stream's map function equal the
    resident loader's batch exactly (decode without Ray; Ray's part only moves rows, in order)."""
    index = scan_folder("imagefolder:tiny", str(make_folder(tmp_path).parent))
    x = torch.from_numpy(decode_images(index.train.paths, 32))
    y = torch.tensor(index.train.labels)
    hist = np.stack([np.bincount(x[:, c].numpy().reshape(-1), minlength=256) for c in range(3)])
    mean, std = stats_from_histograms(hist)
    from trainables.data import channel_stats

    assert (mean, std) == channel_stats(x)  # the resident formula, exactly
    resident = GpuLoader(x, y, mean, std, "cpu", augment=augment != "none", flip=augment == "crop_flip")
    stream = StreamLoader(index.train, 32, mean, std, "cpu", augment=augment)
    batch = 12
    want = list(resident.epoch(batch, torch.Generator().manual_seed(5)))
    columns = stream.draw(torch.Generator().manual_seed(5), True, augment)
    for i, (wx, wy) in enumerate(want):
        rows = {k: v[i * batch : (i + 1) * batch] for k, v in columns.items()}
        got = decode_block(rows, 32, augment, stream._scale, stream._shift)
        assert torch.equal(torch.from_numpy(got["x"]), wx) and torch.equal(torch.from_numpy(got["y"]), wy)


def test_resized_crop_and_fit_handle_other_image_sizes(tmp_path: Path) -> None:
    index = scan_folder("imagefolder:odd", str(make_folder(tmp_path, "odd", size=(50, 37)).parent))
    x = decode_images(index.train.paths[:4], 24)
    assert x.shape == (4, 3, 24, 24) and x.dtype == np.uint8
    stream = StreamLoader(index.train, 24, (0.5,) * 3, (0.25,) * 3, "cpu", augment="resized_crop_flip")
    cols = stream.draw(torch.Generator().manual_seed(0), True, "resized_crop_flip")
    out = decode_block({k: v[:6] for k, v in cols.items()}, 24, "resized_crop_flip", stream._scale, stream._shift)
    assert out["x"].shape == (6, 3, 24, 24) and np.isfinite(out["x"]).all()


def test_export_writes_the_resident_images_losslessly(tmp_path: Path) -> None:
    from trainables.data import load_dataset
    from trainables.export_folder import main

    assert main(["--dataset", "digits", "--data-dir", str(tmp_path), "--train-limit", "40", "--test-limit", "20"]) == 0
    assert main(["--dataset", "digits", "--data-dir", str(tmp_path)]) == 2  # exists: --overwrite needed
    data = load_dataset("digits", train_limit=40, test_limit=20)
    index = scan_folder("imagefolder:digits_png", str(tmp_path))
    assert index.classes == tuple(str(k) for k in range(10)) and len(index.train) == 40 and len(index.val) == 20
    # Folder order is class, then index: the dataset's images sorted stably by label.
    order = torch.argsort(data.train_y, stable=True)
    assert torch.equal(torch.from_numpy(decode_images(index.train.paths, 32)), data.train_x[order])
    assert list(index.train.labels) == data.train_y[order].tolist()


# ------------------------------------------------------------------------------ whole trials (Ray Data)
@pytest.fixture
def own_ray():
    """Shut down the local Ray a streamed loop starts in this process, so later tests start their own."""
    import ray

    was = ray.is_initialized()
    yield
    if not was and ray.is_initialized():
        ray.shutdown()


@pytest.mark.slow
def test_a_streamed_trial_equals_the_resident_one_and_resumes_exactly(tmp_path: Path, own_ray: None) -> None:
    """AdaBatch doubling the batch size every epoch (8, 16, 32) on a tiny folder: the streamed trial's rows
    (losses, gradient signals, decisions) equal the resident trial's; a streamed trial resumed after epoch 1
    repeats the uninterrupted one's epochs 2 and 3."""
    from trainables.loop import TrialLoop

    make_folder(tmp_path, train=20, val=6)
    base = dict(arch="tiny_cnn", dataset="imagefolder:tiny", data_dir=str(tmp_path), method="adabatch", epochs=3)
    common = dict(augment="crop_flip", device="cpu", threads=1, policy={"b0": 8, "resize_every": 1, "b_max": 64})
    runs = {}
    for loader in ("stream", "resident"):
        loop = TrialLoop(TrialConfig(**base, **common, data_loader=loader))
        runs[loader] = [loop.run_epoch()]
        loop.save_checkpoint(tmp_path / f"ck-{loader}")
        runs[loader] += [loop.run_epoch(), loop.run_epoch()]
    strip = [[{k: v for k, v in r.items() if k not in TIMING} for r in rs] for rs in runs.values()]
    assert [r["batch_size"] for r in strip[0]] == [8, 16, 32]
    assert strip[0] == strip[1]
    resumed = TrialLoop(TrialConfig(**base, **common, data_loader="stream"))
    resumed.load_checkpoint(tmp_path / "ck-stream")
    again = [{k: v for k, v in resumed.run_epoch().items() if k not in TIMING} for _ in range(2)]
    assert again == strip[0][1:]


@pytest.mark.slow
def test_trainables_run_trains_a_streamed_folder_with_deba(tmp_path: Path) -> None:
    make_folder(tmp_path, train=16, val=4)
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_ADDRESS": "", "RAY_USAGE_STATS_ENABLED": "0"}
    cmd = [sys.executable, "-m", "trainables.run", "--arch", "tiny_cnn", "--dataset", "imagefolder:tiny"]
    cmd += ["--data-dir", str(tmp_path), "--method", "deba", "--epochs", "2", "--out", str(tmp_path / "r.jsonl")]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "status completed after 2 epochs" in out.stdout
    assert len((tmp_path / "r.jsonl").read_text().splitlines()) == 2


def test_run_grid_refuses_a_malformed_folder_before_ray(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import ray

    from orchestrator.run_grid import main

    ray.shutdown()  # an earlier test's in-process run_grid may have left its local Ray up
    make_folder(tmp_path)
    for p in (tmp_path / "tiny" / "val").rglob("*.png"):
        p.unlink()
    args = ["--preset", "demo", "--study", "bad", "--results", str(tmp_path / "res"), "--archs", "tiny_cnn"]
    args += ["--datasets", "imagefolder:tiny", "--data-dir", str(tmp_path), "--methods", "fixed", "--epochs", "1"]
    assert main(args) == 2
    assert "the val split is empty" in capsys.readouterr().err and not ray.is_initialized()
    assert not (tmp_path / "res" / "bad").exists()


def test_a_streamed_trial_that_cannot_be_placed_is_refused() -> None:
    from trainables.folders import check_stream_cpus, streamed_data_cpus

    assert streamed_data_cpus(("digits",), {}) == 0 and streamed_data_cpus(("imagefolder:a",), {"data_cpus": 3}) == 3
    assert streamed_data_cpus(("imagefolder:a",), {"data_loader": "resident"}) == 0
    check_stream_cpus(("imagefolder:a",), {}, 1.0, 2)
    with pytest.raises(ValueError, match="data_cpus=1 is not allowed with cpus_per_trial=2"):
        check_stream_cpus(("imagefolder:a",), {}, 2.0, 2)


@pytest.mark.slow
def test_run_grid_trains_a_streamed_folder_under_tune(tmp_path: Path) -> None:
    """Through run_grid and Ray Tune: the trial's placement group holds the pipeline's tasks (a data bundle),
    and the epochs table gets the streamed trial's rows."""
    import pyarrow.parquet as pq

    make_folder(tmp_path, train=16, val=4)
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_ADDRESS": "", "RAY_USAGE_STATS_ENABLED": "0"}
    env["RAY_AUTH_MODE"] = "disabled"
    cmd = [sys.executable, str(REPO / "orchestrator" / "run_grid.py"), "--preset", "demo", "--study", "folder"]
    cmd += ["--results", str(tmp_path / "res"), "--archs", "tiny_cnn", "--datasets", "imagefolder:tiny"]
    cmd += ["--data-dir", str(tmp_path), "--methods", "deba", "--seeds", "0", "--epochs", "2"]
    cmd += ["--gpus-per-trial", "0", "--threads", "1", "--quiet", "--verbose", "0"]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=400)
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    rows = pq.read_table(tmp_path / "res" / "folder" / "epochs").to_pandas()
    assert rows["dataset"].tolist() == ["imagefolder:tiny"] * 2 and sorted(rows["epoch"]) == [1, 2]
