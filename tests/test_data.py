"""Tests of the datasets and the device-resident loader (trainables/data.py)."""

from __future__ import annotations

import os
import pickle
import urllib.error

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF

from trainables.data import DATASETS, DatasetNotFoundError, GpuLoader, channel_stats, default_data_dir, load_dataset


# ----------------------------------------------------------------------------- tiny CIFAR files
def _write_pickle(path, obj):
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)  # the real batches are protocol-2 pickles


def write_tiny_cifar10(root, n_per_batch=3, n_test=4, seed=0):
    """A CIFAR-10 in the real on-disk layout (cifar-10-batches-py/, pickled dicts of
    uint8 [n, 3072] rows in R, G, B plane order) with a few images per file."""
    rng = np.random.default_rng(seed)
    folder = os.path.join(root, "cifar-10-batches-py")
    os.makedirs(folder)
    written = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        n = n_test if name == "test_batch" else n_per_batch
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, n).tolist()
        _write_pickle(
            os.path.join(folder, name),
            {
                "batch_label": name,
                "labels": labels,
                "data": data,
                "filenames": [f"img_{name}_{i}.png" for i in range(n)],
            },
        )
        written[name] = (data, labels)
    _write_pickle(
        os.path.join(folder, "batches.meta"),
        {
            "label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"],
            "num_cases_per_batch": n_per_batch,
            "num_vis": 3072,
        },
    )
    return written


def write_tiny_cifar100(root, n_train=6, n_test=4, seed=1):
    """A CIFAR-100 in the real on-disk layout (cifar-100-python/train, test, meta)."""
    rng = np.random.default_rng(seed)
    folder = os.path.join(root, "cifar-100-python")
    os.makedirs(folder)
    written = {}
    for name, n in (("train", n_train), ("test", n_test)):
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        fine = rng.integers(0, 100, n).tolist()
        _write_pickle(
            os.path.join(folder, name),
            {
                "filenames": [f"{name}_{i}.png" for i in range(n)],
                "batch_label": name,
                "fine_labels": fine,
                "coarse_labels": [f // 5 for f in fine],
                "data": data,
            },
        )
        written[name] = (data, fine)
    _write_pickle(
        os.path.join(folder, "meta"),
        {"fine_label_names": [f"class{i}" for i in range(100)], "coarse_label_names": [f"super{i}" for i in range(20)]},
    )
    return written


def _as_nchw(data):
    return torch.from_numpy(data).reshape(-1, 3, 32, 32)


def test_cifar10_round_trip(tmp_path):
    written = write_tiny_cifar10(str(tmp_path))
    ds = load_dataset("cifar10", data_dir=str(tmp_path), download=False, verify=False)
    train = [written[f"data_batch_{i}"] for i in range(1, 6)]
    assert ds.train_x.shape == (15, 3, 32, 32) and ds.train_x.dtype == torch.uint8
    assert torch.equal(ds.train_x, torch.cat([_as_nchw(d) for d, _ in train]))
    assert ds.train_y.tolist() == sum((labels for _, labels in train), [])
    assert torch.equal(ds.test_x, _as_nchw(written["test_batch"][0]))
    assert ds.test_y.tolist() == written["test_batch"][1]
    assert ds.num_classes == 10
    # The first row of a CIFAR record is the red plane: pixel (0, 0, 0) is byte 0, green is 1024.
    first = written["data_batch_1"][0][0]
    assert ds.train_x[0, 0, 0, 0] == first[0] and ds.train_x[0, 1, 0, 0] == first[1024]
    assert ds.train_x[0, 2, 31, 31] == first[3071]


def test_cifar100_round_trip(tmp_path):
    written = write_tiny_cifar100(str(tmp_path))
    ds = load_dataset("cifar100", data_dir=str(tmp_path), download=True, verify=False)  # present: no fetch
    assert torch.equal(ds.train_x, _as_nchw(written["train"][0]))
    assert ds.train_y.tolist() == written["train"][1]  # fine labels
    assert torch.equal(ds.test_x, _as_nchw(written["test"][0]))
    assert ds.num_classes == 100


def test_cifar_md5_check_is_on_by_default(tmp_path):
    write_tiny_cifar10(str(tmp_path))
    with pytest.raises(DatasetNotFoundError, match="md5") as info:
        load_dataset("cifar10", data_dir=str(tmp_path), download=False)
    assert "--data-dir" in str(info.value)


def test_cifar_missing_offline_names_the_place_and_the_fix(tmp_path):
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset("cifar10", data_dir=str(tmp_path), download=False)
    msg = str(info.value)
    assert os.path.join(str(tmp_path), "cifar-10-batches-py") in msg
    assert "data_batch_1" in msg and "test_batch" in msg and "batches.meta" in msg
    assert "--data-dir" in msg and "DEBA_DATA_DIR" in msg and "cifar-10-python.tar.gz" in msg


def test_cifar_download_failure_offline(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("Name or service not known")

    # torchvision's CIFAR.download() calls this after finding the files missing.
    monkeypatch.setattr("torchvision.datasets.cifar.download_and_extract_archive", offline)
    with pytest.raises(DatasetNotFoundError, match="downloading failed") as info:
        load_dataset("cifar100", data_dir=str(tmp_path), download=True)
    assert "cifar-100-python" in str(info.value) and "--data-dir" in str(info.value)


def test_default_data_dir(monkeypatch):
    monkeypatch.setenv("DEBA_DATA_DIR", "/some/where")
    assert default_data_dir() == "/some/where"
    monkeypatch.delenv("DEBA_DATA_DIR")
    assert default_data_dir() == os.path.join(os.path.expanduser("~"), ".cache", "deba", "data")


# ----------------------------------------------------------------------------- other datasets
def test_unknown_dataset_lists_known_ones():
    with pytest.raises(ValueError) as info:
        load_dataset("mnist")
    for name in DATASETS:
        assert name in str(info.value)


def test_bad_limit_is_refused_once_by_the_config():
    from trainables.config import TrialConfig

    with pytest.raises(ValueError, match="train_limit=0 is not allowed; expected an integer >= 1 or null"):
        TrialConfig(arch="tiny_cnn", dataset="synthetic", train_limit=0)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def test_digits_split_and_format(digits):
    assert digits.train_x.shape == (1437, 3, 32, 32) and digits.test_x.shape == (360, 3, 32, 32)
    assert digits.train_x.dtype == torch.uint8 and digits.train_y.dtype == torch.int64
    assert digits.num_classes == 10
    # Grey digits: the three channels are copies of one another.
    assert torch.equal(digits.train_x[:, 0], digits.train_x[:, 1])
    assert torch.equal(digits.train_x[:, 0], digits.train_x[:, 2])
    assert int(digits.train_x.max()) == 255 and int(digits.train_x.min()) == 0
    # Stratified: 1797 = 178..183 per class, so 35..37 test images per class.
    counts = torch.bincount(digits.test_y, minlength=10)
    assert counts.sum() == 360 and counts.min() >= 35 and counts.max() <= 37
    assert digits.mean[0] == digits.mean[1] == digits.mean[2]


def test_digits_pixels_are_bilinear_upsampling_of_sklearn(digits):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    train_idx, _ = train_test_split(np.arange(1797), test_size=360, stratify=bunch.target, random_state=0)
    k = int(np.sort(train_idx)[0])
    img = bunch.images[k] * 255 / 16
    # Output pixel 5 maps to source coordinate (5 + 0.5) / 4 - 0.5 = 0.875 (align_corners=False):
    # weight 1/8 on source pixel 0 and 7/8 on source pixel 1, in each direction.
    w = np.array([0.125, 0.875])
    expected = w @ img[0:2, 0:2] @ w
    assert int(digits.train_x[0, 0, 5, 5]) == round(expected)
    assert int(digits.train_y[0]) == bunch.target[k]


def test_digits_split_does_not_depend_on_seed(digits):
    other = load_dataset("digits", seed=123)
    assert torch.equal(other.train_x, digits.train_x) and torch.equal(other.test_y, digits.test_y)


def test_limits_take_a_seeded_subset(digits):
    a = load_dataset("digits", train_limit=100, test_limit=50, seed=3)
    b = load_dataset("digits", train_limit=100, test_limit=50, seed=3)
    assert a.train_x.shape[0] == 100 and a.test_x.shape[0] == 50
    assert torch.equal(a.train_x, b.train_x)
    # Every kept sample is a row of the full split, and statistics come from the subset.
    full = {tuple(row.tolist()) for row in digits.train_x[:, 0, 16]}
    assert all(tuple(row.tolist()) in full for row in a.train_x[:, 0, 16])
    assert a.mean == channel_stats(a.train_x)[0]


def test_synthetic():
    a = load_dataset("synthetic", train_limit=64, test_limit=32, seed=1)
    b = load_dataset("synthetic", train_limit=64, test_limit=32, seed=1)
    c = load_dataset("synthetic", train_limit=64, test_limit=32, seed=2)
    assert a.train_x.shape == (64, 3, 32, 32) and a.test_x.shape == (32, 3, 32, 32)
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.train_y, b.train_y)
    assert not torch.equal(a.train_x, c.train_x)
    assert 0 <= int(a.train_y.min()) and int(a.train_y.max()) < 10


def test_channel_stats_hand_computed():
    x = torch.zeros(2, 3, 2, 2, dtype=torch.uint8)
    x[0] = 255  # half the pixels 1.0, half 0.0 -> mean 0.5, population std 0.5
    x[:, 2] = 51  # constant 0.2 -> std 0
    mean, std = channel_stats(x)
    assert mean == pytest.approx((0.5, 0.5, 0.2)) and std == pytest.approx((0.5, 0.5, 0.0))


# ----------------------------------------------------------------------------- loader
def _id_loader(n=50, augment=False, channels_last=False, seed=0):
    """A loader over random images whose labels are the sample indices."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    return x, GpuLoader(x, torch.arange(n), (0.5, 0.4, 0.3), (0.25, 0.2, 0.1), "cpu", augment, channels_last)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("augment", [False, True])
def test_batch_shapes_and_dtypes(augment, channels_last):
    _, loader = _id_loader(augment=augment, channels_last=channels_last)
    batches = list(loader.epoch(16, torch.Generator().manual_seed(0)))
    assert len(batches) == loader.num_batches(16) == 3  # 50 // 16, full batches only
    for x, y in batches:
        assert x.shape == (16, 3, 32, 32) and x.dtype == torch.float32
        assert y.shape == (16,) and y.dtype == torch.int64
        assert x.is_contiguous(memory_format=torch.channels_last) == channels_last


def test_every_sample_at_most_once_and_batch_size_changes():
    _, loader = _id_loader(n=50, augment=True)
    g = torch.Generator().manual_seed(0)
    for batch_size in (16, 7, 50, 3):
        ys = [y for _, y in loader.epoch(batch_size, g)]
        assert all(len(y) == batch_size for y in ys)
        seen = torch.cat(ys)
        assert len(seen) == (50 // batch_size) * batch_size
        assert len(set(seen.tolist())) == len(seen)


def test_eval_order_keeps_remainder():
    x, loader = _id_loader(n=50)
    assert loader.num_batches(16, drop_last=False) == 4
    batches = list(loader.epoch(16, None, shuffle=False, drop_last=False))
    assert [len(y) for _, y in batches] == [16, 16, 16, 2]
    assert torch.cat([y for _, y in batches]).tolist() == list(range(50))
    expected = TF.normalize(x.float() / 255, (0.5, 0.4, 0.3), (0.25, 0.2, 0.1))
    torch.testing.assert_close(torch.cat([b for b, _ in batches]), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("channels_last", [False, True])
def test_deterministic_given_generator_seed(channels_last):
    _, loader = _id_loader(augment=True, channels_last=channels_last)

    def run(seed):
        g = torch.Generator().manual_seed(seed)
        return [(x.clone(), y.clone()) for _ in range(2) for x, y in loader.epoch(16, g)]

    a, b, c = run(7), run(7), run(8)
    assert all(torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b))
    assert not all(torch.equal(ya, yc) for (_, ya), (_, yc) in zip(a, c))


@pytest.mark.parametrize("channels_last", [False, True])
def test_crop_and_flip_match_torchvision_reference(channels_last):
    x, loader = _id_loader(n=40, augment=True, channels_last=channels_last)
    mean, std = (0.5, 0.4, 0.3), (0.25, 0.2, 0.1)
    g = torch.Generator().manual_seed(11)
    replay = torch.Generator().manual_seed(11)
    batches = list(loader.epoch(8, g))
    # The documented draw order: randperm, then (dy, dx) offsets in 0..8, then flip bits.
    order = torch.randperm(40, generator=replay)
    offsets = torch.randint(0, 9, (40, 2), generator=replay)
    flips = torch.randint(0, 2, (40,), generator=replay).bool()
    assert flips.any() and (~flips).any() and (offsets != 4).any()
    pos = 0
    for images, labels in batches:
        for k in range(len(labels)):
            n = int(order[pos])
            assert int(labels[k]) == n
            ref = TF.crop(TF.pad(x[n], [4]), int(offsets[pos, 0]), int(offsets[pos, 1]), 32, 32)
            if flips[pos]:
                ref = TF.hflip(ref)
            ref = TF.normalize(ref.float() / 255, mean, std)
            torch.testing.assert_close(images[k], ref, rtol=1e-5, atol=1e-5)
            pos += 1
    assert pos == 40


def test_fixed_offset_corner_is_zero_padding():
    # Offset (0, 0), no flip: the first 4 rows and columns are zero padding (black pixels);
    # the rest is the image shifted by 4.
    x, loader = _id_loader(n=1, augment=True)
    out = loader._crop_flip(torch.tensor([0]), 0, 1, torch.tensor([[0, 0]]), torch.tensor([False]))
    assert torch.equal(out[0, :, :4, :], torch.zeros(3, 4, 32, dtype=torch.uint8))
    assert torch.equal(out[0, :, 4:, 4:], x[0, :, :28, :28])
    # Offset (8, 8) then flip: the crop is x[4:, 4:] followed by 4 padding columns on the
    # right, which the flip moves to the left.
    flipped = loader._crop_flip(torch.tensor([0]), 0, 1, torch.tensor([[8, 8]]), torch.tensor([True]))
    assert torch.equal(flipped[0, :, :, :4], torch.zeros(3, 32, 4, dtype=torch.uint8))
    assert torch.equal(flipped[0, :, :28, 4:], x[0, :, 4:, 4:].flip(-1))


def test_batch_augmentation_independent_of_batch_size():
    # The draws are per epoch position, so two batch sizes see the same augmented stream.
    _, loader = _id_loader(n=48, augment=True)
    a = torch.cat([x for x, _ in loader.epoch(16, torch.Generator().manual_seed(5))])
    b = torch.cat([x for x, _ in loader.epoch(12, torch.Generator().manual_seed(5))])
    assert torch.equal(a, b)


def test_normalisation_of_unaugmented_train_set(digits):
    loader = GpuLoader(digits.train_x, digits.train_y, digits.mean, digits.std, "cpu", augment=False)
    x = torch.cat([b for b, _ in loader.epoch(500, None, shuffle=False, drop_last=False)]).double()
    assert x.shape[0] == 1437
    torch.testing.assert_close(x.mean(dim=(0, 2, 3)), torch.zeros(3, dtype=torch.float64), atol=1e-5, rtol=0)
    torch.testing.assert_close(
        x.std(dim=(0, 2, 3), correction=0), torch.ones(3, dtype=torch.float64), atol=1e-5, rtol=0
    )


def test_augment_override_and_bad_arguments():
    x, loader = _id_loader(n=10, augment=True)
    centre = torch.cat([b for b, _ in loader.epoch(5, None, shuffle=False, drop_last=False, augment=False)])
    torch.testing.assert_close(centre, TF.normalize(x.float() / 255, (0.5, 0.4, 0.3), (0.25, 0.2, 0.1)))
    _, plain = _id_loader(n=10, augment=False)
    with pytest.raises(ValueError, match="augment"):
        plain.epoch(5, None, augment=True)
    with pytest.raises(ValueError, match="batch_size"):
        loader.num_batches(0)
    with pytest.raises(ValueError, match="batch_size 11 exceeds"):
        loader.epoch(11, None)
    assert loader.num_batches(11, drop_last=False) == 1
    with pytest.raises(ValueError, match="x_uint8"):
        GpuLoader(torch.zeros(2, 3, 32, 32), torch.zeros(2, dtype=torch.int64), (0, 0, 0), (1, 1, 1), "cpu", False)


# ----------------------------------------------------------------------------- tiny Fashion-MNIST files
def write_idx(path, array):
    """An IDX file of uint8 `array` (gzipped when the name ends in .gz), as Zalando/LeCun write them."""
    import gzip

    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


def write_tiny_fashion_mnist(folder, n_train=7, n_test=5, gz=True, seed=0):
    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    out = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n).astype(np.uint8)
        suffix = ".gz" if gz else ""
        write_idx(os.path.join(folder, f"{prefix}-images-idx3-ubyte{suffix}"), images)
        write_idx(os.path.join(folder, f"{prefix}-labels-idx1-ubyte{suffix}"), labels)
        out[prefix] = (images, labels)
    return out


@pytest.fixture
def no_debian_copy(monkeypatch, tmp_path):
    """Point the Debian location at an empty folder: the tests must not depend on the package."""
    import trainables.data as data

    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST", str(tmp_path / "no-debian-package"))


@pytest.mark.parametrize(
    "layout,gz", [("fashion-mnist", True), ("fashion-mnist", False), (os.path.join("FashionMNIST", "raw"), True)]
)
def test_fashion_mnist_round_trip(tmp_path, no_debian_copy, layout, gz):
    written = write_tiny_fashion_mnist(str(tmp_path / "data" / layout), gz=gz)
    ds = load_dataset("fashion_mnist", data_dir=str(tmp_path / "data"), download=False)
    assert ds.num_classes == 10 and ds.train_x.dtype == torch.uint8
    assert ds.train_x.shape == (7, 3, 32, 32) and ds.test_x.shape == (5, 3, 32, 32)
    images, labels = written["train"]
    # Zero-padded by 2 px on every side, the grey image replicated to three channels.
    assert torch.equal(ds.train_x[:, :, 2:30, 2:30], torch.from_numpy(images)[:, None].expand(-1, 3, -1, -1))
    assert int(ds.train_x[:, :, :2].sum()) == 0 and int(ds.train_x[:, :, :, 30:].sum()) == 0
    assert ds.train_y.tolist() == labels.tolist() and ds.train_y.dtype == torch.int64
    assert ds.test_y.tolist() == written["t10k"][1].tolist()


def test_fashion_mnist_from_the_debian_location(tmp_path, monkeypatch):
    import trainables.data as data

    written = write_tiny_fashion_mnist(str(tmp_path / "debian"), n_train=3, n_test=2)
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST", str(tmp_path / "debian"))
    ds = load_dataset("fashion_mnist", data_dir=str(tmp_path / "empty"), download=False)
    assert ds.train_y.tolist() == written["train"][1].tolist()


def test_fashion_mnist_missing_files_name_all_three_ways(tmp_path, no_debian_copy):
    with pytest.raises(DatasetNotFoundError) as err:
        load_dataset("fashion_mnist", data_dir=str(tmp_path), download=False)
    text = str(err.value)
    assert "apt-get install dataset-fashion-mnist" in text and "--data-dir" in text and "online" in text
    assert "train-images-idx3-ubyte" in text


def test_idx_reader_refuses_a_truncated_file(tmp_path):
    from trainables.data import read_idx

    path = str(tmp_path / "x-idx3-ubyte")
    write_idx(path, np.zeros((4, 28, 28), np.uint8))
    with open(path, "r+b") as f:
        f.truncate(100)
    with pytest.raises(ValueError, match="IDX header"):
        read_idx(path)


def test_crop_only_augmentation_never_flips():
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.int64).remainder(251).to(torch.uint8).reshape(2, 3, 8, 8)
    loader = GpuLoader(x, torch.arange(2), (0.5,) * 3, (0.25,) * 3, "cpu", augment=True, flip=False)
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        for batch, y in loader.epoch(2, gen, shuffle=False):
            for img, i in zip(batch, y):
                raw = (img - loader._shift[0]) / loader._scale[0]
                raw = raw.round().to(torch.int64)
                padded = torch.nn.functional.pad(x[int(i)].to(torch.int64), (4, 4, 4, 4))
                # Some 8x8 window of the padded original, in the original orientation.
                assert any(torch.equal(raw, padded[:, dy : dy + 8, dx : dx + 8]) for dy in range(9) for dx in range(9))
