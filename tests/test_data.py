"""Dataset readers, splits, normalization and the ``sane data`` command.

Every reader is tested on tiny files written here in the official format, with random pixels
(so a swapped axis or a wrong byte offset cannot go unnoticed) and the image's index stored in
its first pixel (so each example can be traced through the seeded split).
"""

from __future__ import annotations

import gzip
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.io import savemat

from sane.cli import main
from sane.data import load_dataset
from sane.data.cifar import read_cifar10, read_cifar100
from sane.data.dataset import RawImages, assemble
from sane.data.digits import read_digits
from sane.data.idx import read_idx, read_idx_dataset, write_idx
from sane.data.mnist1d import Mnist1dConfig, read_mnist1d, templates
from sane.data.stl10 import read_stl10
from sane.data.svhn import read_svhn
from sane.errors import ConfigError, DatasetNotFoundError, FormatError

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(autouse=True)
def _no_data_dir(monkeypatch):
    """Tests look only where they say: an inherited $SANE_DATA_DIR must not interfere."""
    monkeypatch.delenv("SANE_DATA_DIR", raising=False)


def images(n: int, shape: tuple[int, ...], seed: int, first: int = 0) -> np.ndarray:
    """Random uint8 images ``[n, *shape]`` whose first pixel is ``first + index``."""
    x = np.random.default_rng(seed).integers(0, 256, size=(n, *shape), dtype=np.uint8)
    x.reshape(n, -1)[:, 0] = np.arange(first, first + n)
    return x


def names(path: Path, text: str) -> str:
    """A ``match=`` pattern for an error message that starts by naming ``path``."""
    return re.escape(f"{path}: {text}")


def labels(n: int, num_classes: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, num_classes, size=n).astype(np.uint8)


def index_of(split_x: torch.Tensor, mean: float, std: float) -> np.ndarray:
    """Recover the stored index (first pixel) of each normalized example."""
    first = split_x.reshape(len(split_x), -1)[:, 0] * std + mean
    return torch.round(first * 255).to(torch.int64).numpy()


# ---------------------------------------------------------------------------- file writers


def write_mnist_idx(root: Path, gz: bool, n_train: int = 12, n_test: int = 5) -> dict:
    arrays = {
        "train-images-idx3-ubyte": images(n_train, (28, 28), seed=1),
        "train-labels-idx1-ubyte": labels(n_train, 10, seed=2),
        "t10k-images-idx3-ubyte": images(n_test, (28, 28), seed=3),
        "t10k-labels-idx1-ubyte": labels(n_test, 10, seed=4),
    }
    for stem, array in arrays.items():
        write_idx(root / (stem + (".gz" if gz else "")), array)
    return arrays


def write_cifar(root: Path, hundred: bool) -> tuple[np.ndarray, ...]:
    """Official binary files under ``root``; returns train images ``[N, 3, 32, 32]``, train
    (fine) labels, test images and test labels, in file order."""
    if hundred:
        folder, classes = root / "cifar-100-binary", 100
        files = {"train.bin": 7, "test.bin": 3}
    else:
        folder, classes = root / "cifar-10-batches-bin", 10
        files = {f"data_batch_{i}.bin": n for i, n in zip(range(1, 6), (3, 1, 2, 2, 4))}
        files["test_batch.bin"] = 3
    folder.mkdir(parents=True)
    written, first = [], 0
    for seed, (name, n) in enumerate(files.items()):
        x = images(n, (3, 32, 32), seed=seed, first=first)
        y = labels(n, classes, seed=seed + 100)
        # CIFAR-100 stores a coarse label (made to differ from the fine one here) first.
        head = [(y + 1) % 20, y] if hundred else [y]
        (folder / name).write_bytes(np.column_stack([*head, x.reshape(n, -1)]).tobytes())
        written.append((x, y.astype(np.int64)))
        first += n
    train, test = written[:-1], written[-1]
    return np.concatenate([x for x, _ in train]), np.concatenate([y for _, y in train]), *test


def write_svhn(root: Path, n_train: int = 6, n_test: int = 4) -> dict:
    """``.mat`` files as SVHN ships them; returns the images ``[N, 3, 32, 32]`` and digits."""
    root.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, n, seed in (("train", n_train, 30), ("test", n_test, 40)):
        x = images(n, (3, 32, 32), seed=seed)
        digits = np.arange(n) % 10  # includes the digit 0, stored as label 10
        stored = np.where(digits == 0, 10, digits).astype(np.uint8)[:, None]
        # X is [height, width, channel, image].
        savemat(root / f"{split}_32x32.mat", {"X": x.transpose(2, 3, 1, 0), "y": stored})
        out[split] = (x, digits)
    return out


def write_stl10(root: Path, n_train: int = 4, n_test: int = 3) -> dict:
    """Binary files as STL-10 ships them (planes column-major); returns ``[N, 3, 96, 96]``."""
    folder = root / "stl10_binary"
    folder.mkdir(parents=True)
    out = {}
    for split, n, seed in (("train", n_train, 50), ("test", n_test, 60)):
        x = images(n, (3, 96, 96), seed=seed)
        y = labels(n, 10, seed=seed + 1)
        planes = b"".join(plane.tobytes(order="F") for image in x for plane in image)
        (folder / f"{split}_X.bin").write_bytes(planes)
        (folder / f"{split}_y.bin").write_bytes((y + 1).tobytes())
        out[split] = (x, y.astype(np.int64))
    return out


# ---------------------------------------------------------------------------- readers


@pytest.mark.parametrize("gz", [True, False])
def test_idx_reader_returns_the_stored_pixels_and_labels(tmp_path, gz):
    arrays = write_mnist_idx(tmp_path, gz=gz)
    raw = read_idx_dataset(tmp_path, mean=None, std=None)
    np.testing.assert_array_equal(raw.train_x[:, 0], arrays["train-images-idx3-ubyte"])
    np.testing.assert_array_equal(raw.train_y, arrays["train-labels-idx1-ubyte"])
    np.testing.assert_array_equal(raw.test_x[:, 0], arrays["t10k-images-idx3-ubyte"])
    np.testing.assert_array_equal(raw.test_y, arrays["t10k-labels-idx1-ubyte"])


def test_idx_round_trips_every_type(tmp_path):
    for dtype in (np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64):
        array = (np.arange(24).reshape(2, 3, 4) - 5).astype(dtype)
        write_idx(tmp_path / "a.gz", array)
        back = read_idx(tmp_path / "a.gz")
        assert back.dtype == array.dtype
        np.testing.assert_array_equal(back, array)


@pytest.mark.parametrize(
    ("name", "gz", "mean", "std"),
    [("mnist", False, 0.1307, 0.3081), ("fashion-mnist", True, 0.5, 0.5)],
)
def test_idx_datasets_load_with_published_constants(tmp_path, name, gz, mean, std):
    arrays = write_mnist_idx(tmp_path, gz=gz)
    ds = load_dataset(name, root=tmp_path, seed=3)
    assert (ds.mean, ds.std) == ((mean,), (std,))
    train_x, train_y = arrays["train-images-idx3-ubyte"], arrays["train-labels-idx1-ubyte"]
    for split in (ds.train, ds.val):
        idx = index_of(split.x, mean, std)
        expected = (train_x[idx][:, None].astype(np.float32) / 255 - mean) / std
        np.testing.assert_allclose(split.x, expected, rtol=0, atol=1e-6)
        np.testing.assert_array_equal(split.y, train_y[idx])
    seen = np.concatenate([index_of(s.x, mean, std) for s in (ds.train, ds.val)])
    assert sorted(seen) == list(range(12))
    assert (len(ds.train), len(ds.val), len(ds.test)) == (10, 2, 5)


def test_mirror_spelling_of_idx_names_is_accepted(tmp_path):
    arrays = write_mnist_idx(tmp_path, gz=True)
    for path in tmp_path.iterdir():
        path.rename(tmp_path / path.name.replace("-idx", ".idx"))
    raw = read_idx_dataset(tmp_path, mean=None, std=None)
    np.testing.assert_array_equal(raw.test_x[:, 0], arrays["t10k-images-idx3-ubyte"])


@pytest.mark.parametrize("layout", ["parent", "folder"])
def test_cifar10_reader_returns_the_stored_pixels_and_labels(tmp_path, layout):
    train_x, train_y, test_x, test_y = write_cifar(tmp_path, hundred=False)
    root = tmp_path if layout == "parent" else tmp_path / "cifar-10-batches-bin"
    raw = read_cifar10(root)
    np.testing.assert_array_equal(raw.train_x, train_x)  # batches 1..5 in order
    np.testing.assert_array_equal(raw.train_y, train_y)
    np.testing.assert_array_equal(raw.test_x, test_x)
    np.testing.assert_array_equal(raw.test_y, test_y)
    assert raw.num_classes == 10
    # The first bytes of a record after the label are the top row of the red plane.
    record = (tmp_path / "cifar-10-batches-bin" / "data_batch_1.bin").read_bytes()
    assert list(raw.train_x[0, 0, 0, :5]) == list(record[1:6])


def test_cifar100_reader_uses_fine_labels(tmp_path):
    train_x, train_y, test_x, test_y = write_cifar(tmp_path, hundred=True)
    raw = read_cifar100(tmp_path / "cifar-100-binary")
    np.testing.assert_array_equal(raw.train_x, train_x)
    np.testing.assert_array_equal(raw.train_y, train_y)
    np.testing.assert_array_equal(raw.test_x, test_x)
    np.testing.assert_array_equal(raw.test_y, test_y)
    assert raw.num_classes == 100
    assert (raw.mean, raw.std) == (None, None)


def test_svhn_reader_maps_label_10_to_digit_0(tmp_path):
    written = write_svhn(tmp_path)
    raw = read_svhn(tmp_path)
    for split, (x, digits) in written.items():
        np.testing.assert_array_equal(getattr(raw, f"{split}_x"), x)
        np.testing.assert_array_equal(getattr(raw, f"{split}_y"), digits)
    assert 0 in raw.train_y


def test_stl10_reader_transposes_column_major_planes(tmp_path):
    written = write_stl10(tmp_path)
    raw = read_stl10(tmp_path)
    for split, (x, y) in written.items():
        np.testing.assert_array_equal(getattr(raw, f"{split}_x"), x)
        np.testing.assert_array_equal(getattr(raw, f"{split}_y"), y)
    # The file's second byte is the pixel in row 1, column 0 of the red plane.
    second = (tmp_path / "stl10_binary" / "train_X.bin").read_bytes()[1]
    assert raw.train_x[0, 0, 1, 0] == second


@pytest.mark.parametrize(
    ("name", "writer", "folder"),
    [
        ("cifar10", lambda root: write_cifar(root, hundred=False), "cifar-10-batches-bin"),
        ("cifar100", lambda root: write_cifar(root, hundred=True), "cifar-100-binary"),
        ("svhn", write_svhn, None),
        ("stl10", write_stl10, "stl10_binary"),
    ],
)
def test_colour_datasets_load_by_name_from_root_or_data_dir(tmp_path, monkeypatch, name, writer,
                                                            folder):
    writer(tmp_path / name)
    ds = load_dataset(name, root=tmp_path / name)
    assert ds.input_shape == ((3, 96, 96) if name == "stl10" else (3, 32, 32))
    assert ds.num_classes == (100 if name == "cifar100" else 10)
    if folder is not None:  # the unpacked folder itself is accepted as root
        same = load_dataset(name, root=tmp_path / name / folder)
        assert torch.equal(same.train.x, ds.train.x)
    monkeypatch.setenv("SANE_DATA_DIR", str(tmp_path))
    assert torch.equal(load_dataset(name).test.x, ds.test.x)


# ---------------------------------------------------------------------------- bad files


def test_truncated_and_corrupt_idx_files_name_the_file(tmp_path):
    write_mnist_idx(tmp_path, gz=False)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(FormatError, match=names(path, "IDX header announces shape")):
        read_idx_dataset(tmp_path, mean=None, std=None)

    path.write_bytes(b"\x00\x00\x07\x03" + bytes(100))
    with pytest.raises(FormatError, match=names(path, "not an IDX file")):
        read_idx_dataset(tmp_path, mean=None, std=None)

    gz = tmp_path / "x.gz"
    write_idx(gz, np.zeros((3, 4, 4), np.uint8))
    gz.write_bytes(gz.read_bytes()[:-10])
    with pytest.raises(FormatError, match=names(gz, "cannot read")):
        read_idx(gz)
    data = bytearray(gzip.compress(bytes(4000)))
    data[20:30] = b"\xff" * 10  # corrupt the deflate stream itself
    gz.write_bytes(bytes(data))
    with pytest.raises(FormatError, match=names(gz, "cannot read")):
        read_idx(gz)


def test_bad_idx_labels_name_the_file(tmp_path):
    write_mnist_idx(tmp_path, gz=True)
    path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    write_idx(path, np.array([0, 1, 10, 2, 3], np.uint8))
    with pytest.raises(FormatError, match=names(path, "labels must lie in [0, 10)")):
        load_dataset("mnist", root=tmp_path)
    write_idx(path, np.array([0, 1, 2], np.uint8))
    with pytest.raises(FormatError, match=names(path, "expected [5] labels")):
        load_dataset("mnist", root=tmp_path)


def test_bad_cifar_files_name_the_file(tmp_path):
    write_cifar(tmp_path, hundred=False)
    path = tmp_path / "cifar-10-batches-bin" / "data_batch_3.bin"
    good = path.read_bytes()
    path.write_bytes(good + b"\x00")
    with pytest.raises(FormatError, match=names(path, "expected a whole number of 3073-byte")):
        read_cifar10(tmp_path)
    path.write_bytes(b"")
    with pytest.raises(FormatError, match=names(path, "expected a whole number")):
        read_cifar10(tmp_path)
    path.write_bytes(b"\x0a" + good[1:])
    with pytest.raises(FormatError, match=names(path, "labels must lie in [0, 10)")):
        read_cifar10(tmp_path)

    write_cifar(tmp_path / "c100", hundred=True)
    path = tmp_path / "c100" / "cifar-100-binary" / "test.bin"
    path.write_bytes(b"\x01\x64" + path.read_bytes()[2:])  # fine label 100
    with pytest.raises(FormatError, match=names(path, "labels must lie in [0, 100)")):
        read_cifar100(tmp_path / "c100")


def test_bad_svhn_files_name_the_file(tmp_path):
    write_svhn(tmp_path)
    path = tmp_path / "test_32x32.mat"
    savemat(path, {"X": images(2, (32, 32, 3), seed=0).transpose(1, 2, 3, 0), "y": [[0], [3]]})
    with pytest.raises(FormatError, match=names(path, "labels must be the integers 1..10")):
        read_svhn(tmp_path)
    savemat(path, {"X": np.zeros((28, 28, 3, 2), np.uint8), "y": [[1], [3]]})
    with pytest.raises(FormatError, match=names(path, "X must be uint8 [32, 32, 3, N]")):
        read_svhn(tmp_path)
    savemat(path, {"X": np.zeros((32, 32, 3, 2), np.uint8), "y": [[1], [3], [4]]})
    with pytest.raises(FormatError, match=names(path, "2 images but 3 labels")):
        read_svhn(tmp_path)
    path.write_bytes(b"not a MATLAB file" * 20)
    with pytest.raises(FormatError, match=names(path, "not a readable MATLAB v5 file")):
        read_svhn(tmp_path)


def test_bad_stl10_files_name_the_file(tmp_path):
    write_stl10(tmp_path)
    folder = tmp_path / "stl10_binary"
    images_path, labels_path = folder / "test_X.bin", folder / "test_y.bin"
    images_path.write_bytes(images_path.read_bytes()[:-1])
    with pytest.raises(FormatError, match=names(images_path, "expected whole images of 27648")):
        read_stl10(tmp_path)
    write_stl10(tmp_path / "again")
    folder = tmp_path / "again" / "stl10_binary"
    labels_path = folder / "test_y.bin"
    labels_path.write_bytes(bytes([1, 0, 3]))
    with pytest.raises(FormatError, match=names(labels_path, "labels must lie in 1..10")):
        read_stl10(folder)
    labels_path.write_bytes(bytes([1, 2]))
    with pytest.raises(FormatError, match=names(labels_path, "2 labels for 3 images")):
        read_stl10(folder)


# ---------------------------------------------------------------------------- missing data


FILES_NAMED = {
    "fashion-mnist": "train-images-idx3-ubyte.gz",
    "mnist": "t10k-labels-idx1-ubyte",
    "cifar10": "cifar-10-batches-bin",
    "cifar100": "cifar-100-binary",
    "svhn": "train_32x32.mat",
    "stl10": "stl10_binary",
}


@pytest.mark.parametrize("name", sorted(FILES_NAMED))
def test_missing_dataset_names_paths_tried_and_how_to_provide_it(tmp_path, monkeypatch, name):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset(name, root=empty)
    message = str(info.value)
    assert f"tried {empty}." in message
    assert "To provide it" in message and FILES_NAMED[name] in message
    assert "\n" not in message

    monkeypatch.setenv("SANE_DATA_DIR", str(tmp_path))
    if name != "fashion-mnist":  # its Debian default is installed here
        with pytest.raises(DatasetNotFoundError, match=re.escape(f"tried {tmp_path / name}.")):
            load_dataset(name)


def test_generated_datasets_take_no_root(tmp_path):
    for name in ("digits", "mnist1d"):
        with pytest.raises(ConfigError, match="takes no root"):
            load_dataset(name, root=tmp_path)


def test_cli_reports_a_missing_dataset_in_one_line(tmp_path, capsys):
    assert main(["data", "info", "cifar10", "--root", str(tmp_path)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("sane: error: dataset 'cifar10' not found")
    assert err.count("\n") == 1 and str(tmp_path) in err


@pytest.mark.slow
def test_sane_executable_reports_a_missing_dataset_in_one_line(tmp_path):
    sane = Path(sys.executable).parent / "sane"
    assert sane.is_file(), f"the sane console script is not installed next to {sys.executable}"
    done = subprocess.run(
        [str(sane), "data", "info", "stl10", "--root", str(tmp_path)],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.startswith("sane: error: dataset 'stl10' not found")
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr


# ---------------------------------------------------------------------------- assembling


def _synthetic(n_train: int, n_test: int | None) -> RawImages:
    """Random 1×2×2 images with 3 classes; the test set (if any) repeats the first images."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(n_train, 1, 2, 2)).astype(np.uint8)
    y = rng.integers(0, 3, size=n_train)
    return RawImages(
        train_x=x, train_y=y, test_x=None if n_test is None else x[:n_test],
        test_y=None if n_test is None else y[:n_test], num_classes=3, source="synthetic",
    )


@pytest.mark.parametrize("n", [20, 100, 1797, 5000])
def test_split_sizes_are_exact(n):
    ds = assemble(_synthetic(n, None), "s")
    val = round(0.15 * n)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (n - 2 * val, val, val)
    # Fractions whose cumulative sums are not exact in binary used to move one example.
    for val_n in (1, 800, 905, 915, 4999):
        if val_n < n:
            ds = assemble(_synthetic(n, 4), "s", val_fraction=val_n / n)
            assert (len(ds.train), len(ds.val), len(ds.test)) == (n - val_n, val_n, 4)


def test_assemble_leaves_the_raw_arrays_alone_and_rejects_non_finite_inputs():
    x = np.random.default_rng(0).random((12, 2, 3, 3), dtype=np.float32)
    raw = RawImages(train_x=x, train_y=np.arange(12) % 3, test_x=x[:4], test_y=np.zeros(4),
                    num_classes=3, source="synthetic", scale=2.0)
    before = x.copy()
    assemble(raw, "s")
    np.testing.assert_array_equal(x, before)  # scaling and normalization work on copies
    x[5, 1, 2, 0] = np.nan
    with pytest.raises(FormatError, match="s train: inputs contain NaN or infinite"):
        assemble(raw, "s")


def test_split_is_seeded_and_a_partition(tmp_path):
    write_cifar(tmp_path, hundred=False)
    a, b, c = (load_dataset("cifar10", root=tmp_path, seed=s, val_fraction=0.25) for s in (1, 1, 2))
    for split in ("train", "val", "test"):
        assert torch.equal(getattr(a, split).x, getattr(b, split).x)
        assert torch.equal(getattr(a, split).y, getattr(b, split).y)
    index = {ds.seed: [index_of(s.x, 0.5, 0.5) for s in (ds.train, ds.val)] for ds in (a, c)}
    assert sorted(np.concatenate(index[1])) == list(range(12))
    assert sorted(np.concatenate(index[2])) == list(range(12))
    assert set(index[1][1]) != set(index[2][1])
    np.testing.assert_array_equal(index_of(a.test.x, 0.5, 0.5), range(12, 15))


def test_published_constants_are_applied_to_the_stored_pixels(tmp_path):
    train_x, train_y, _, _ = write_cifar(tmp_path, hundred=False)
    ds = load_dataset("cifar10", root=tmp_path, seed=5)
    assert (ds.mean, ds.std) == ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    idx = index_of(ds.train.x, 0.5, 0.5)
    expected = (torch.from_numpy(train_x[idx]).float() / 255 - 0.5) / 0.5
    np.testing.assert_allclose(ds.train.x, expected, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(ds.train.y, train_y[idx])


def test_computed_constants_standardize_the_train_split(tmp_path):
    write_cifar(tmp_path, hundred=True)
    ds = load_dataset("cifar100", root=tmp_path, val_fraction=2 / 7)
    x = ds.train.x.double()
    np.testing.assert_allclose(x.mean(dim=(0, 2, 3)), np.zeros(3), rtol=0, atol=1e-6)
    np.testing.assert_allclose(x.std(dim=(0, 2, 3)), np.ones(3), rtol=0, atol=1e-5)
    assert ds.mean != (0.5, 0.5, 0.5)


def test_grayscale_uses_bt601_weights_and_keeps_uniform_constants(tmp_path):
    write_svhn(tmp_path)
    raw = read_svhn(tmp_path)
    ds = load_dataset("svhn", root=tmp_path, grayscale=True, val_fraction=1 / 3)
    assert ds.input_shape == (1, 32, 32)
    assert (ds.mean, ds.std) == ((0.5,), (0.5,))  # Model Zoos: Grayscale, then Normalize(.5, .5)
    gray = np.tensordot(raw.test_x / 255.0, [0.299, 0.587, 0.114], axes=([1], [0]))
    np.testing.assert_allclose(ds.test.x[:, 0].numpy(), (gray - 0.5) / 0.5, rtol=0, atol=1e-5)

    write_cifar(tmp_path, hundred=True)
    ds = load_dataset("cifar100", root=tmp_path, grayscale=True, val_fraction=2 / 7)
    assert ds.input_shape == (1, 32, 32)
    assert abs(ds.train.x.mean().item()) < 1e-6 and abs(ds.train.x.std().item() - 1) < 1e-5


def test_digits_resize_to_28_keeps_split_and_image_means():
    small = load_dataset("digits", seed=4)
    large = load_dataset("digits", size=28, seed=4)
    assert (len(large.train), len(large.val), len(large.test)) == (1257, 270, 270)
    assert large.input_shape == (1, 28, 28)
    for split in ("train", "val", "test"):
        assert torch.equal(getattr(small, split).y, getattr(large, split).y)
    # Bilinear resampling keeps each image's mean brightness; the statistics are recomputed.
    before = small.train.x * small.std[0] + small.mean[0]
    after = large.train.x * large.std[0] + large.mean[0]
    np.testing.assert_allclose(after.mean(dim=(1, 2, 3)), before.mean(dim=(1, 2, 3)),
                               rtol=0, atol=1e-4)
    assert abs(large.train.x.mean().item()) < 1e-5 and abs(large.train.x.std().item() - 1) < 1e-5
    assert large.std[0] < small.std[0]  # smoothing removes variance


def test_digits_split_is_70_15_15_of_the_embedded_data():
    raw = read_digits()
    assert raw.train_x.shape == (1797, 1, 8, 8) and raw.test_x is None
    ds = load_dataset("digits", seed=0)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (1257, 270, 270)
    counts = sum(np.array(getattr(ds, s).class_counts(10)) for s in ("train", "val", "test"))
    np.testing.assert_array_equal(counts, np.bincount(raw.train_y, minlength=10))


# ---------------------------------------------------------------------------- MNIST-1D


def test_mnist1d_matches_the_reference_generator():
    raw = read_mnist1d()
    assert raw.train_x.shape == (4000, 1, 40) and raw.test_x.shape == (1000, 1, 40)
    assert raw.scale == 1.0
    # Values printed by the reference implementation (pip package mnist1d 0.0.2.post1,
    # make_dataset(get_dataset_args()) with its defaults, seed 42).
    np.testing.assert_array_equal(
        raw.train_y[:20], [2, 6, 4, 5, 6, 6, 6, 0, 3, 1, 6, 9, 4, 3, 4, 5, 1, 9, 0, 3]
    )
    np.testing.assert_allclose(
        raw.train_x[0, 0, :4], [-0.33200567, -0.47191037, -0.77869708, -1.00974083], atol=1e-8
    )
    np.testing.assert_allclose(
        raw.test_x[-1, 0, -3:], [0.65987565, 0.87773435, 1.19315184], atol=1e-8
    )
    everything = np.concatenate([raw.train_x, raw.test_x])
    assert abs(everything.mean()) < 1e-12 and abs(everything.std() - 1) < 1e-12
    np.testing.assert_array_equal(np.bincount(np.concatenate([raw.train_y, raw.test_y])),
                                  [500] * 10)


def test_mnist1d_without_augmentation_is_the_resampled_template():
    cfg = Mnist1dConfig(num_samples=30, padding=(0, 0), scale_coeff=0.0, max_translation=1,
                        corr_noise_scale=0.0, iid_noise_scale=0.0, shear_scale=0.0)
    raw = read_mnist1d(cfg)
    x, y = np.concatenate([raw.train_x[:, 0], raw.test_x[:, 0]]), np.concatenate(
        [raw.train_y, raw.test_y])
    stretched = np.stack([np.interp(np.linspace(0, 11, 40), np.arange(12), t + 1e-8)
                          for t in templates()])
    expected = stretched[y]
    expected = (expected - expected.mean()) / expected.std()
    np.testing.assert_allclose(x, expected, rtol=0, atol=1e-12)


def test_mnist1d_is_deterministic_per_seed():
    a, b, c = (read_mnist1d(Mnist1dConfig(num_samples=100, seed=s)) for s in (42, 42, 7))
    np.testing.assert_array_equal(a.train_x, b.train_x)
    np.testing.assert_array_equal(a.train_y, b.train_y)
    assert not np.array_equal(a.train_x, c.train_x)
    state = np.random.get_state()[1].copy()  # noqa: NPY002 (the global legacy generator)
    read_mnist1d(Mnist1dConfig(num_samples=20))
    np.testing.assert_array_equal(np.random.get_state()[1], state)  # noqa: NPY002


def test_mnist1d_loads_by_name_as_signals():
    ds = load_dataset("mnist1d", seed=1)
    assert ds.input_shape == (1, 40)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (3333, 667, 1000)
    assert abs(ds.train.x.mean().item()) < 1e-5 and abs(ds.train.x.std().item() - 1) < 1e-5
    with pytest.raises(ConfigError, match="images"):
        load_dataset("mnist1d", size=28)
    with pytest.raises(ConfigError, match="padding"):
        read_mnist1d(Mnist1dConfig(padding=(5, 2)))


# ---------------------------------------------------------------------------- real data, CLI


@pytest.mark.slow
def test_real_fashion_mnist_loads_from_the_debian_package():
    assert FASHION_MNIST.is_dir(), "install the Debian package dataset-fashion-mnist"
    ds = load_dataset("fashion-mnist")
    assert ds.source == str(FASHION_MNIST)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (50000, 10000, 10000)
    assert ds.input_shape == (1, 28, 28) and (ds.mean, ds.std) == ((0.5,), (0.5,))
    assert ds.test.class_counts(10) == [1000] * 10  # the official test set is balanced
    assert ds.train.x.min().item() == -1.0 and ds.train.x.max().item() == 1.0


def test_data_info_prints_sizes_balance_and_split(capsys):
    assert main(["data", "info", "digits", "--seed", "2"]) == 0
    out = capsys.readouterr().out
    assert "dataset digits: 10 classes, input shape [1, 8, 8]" in out
    assert "split (seed 2): 70/15/15 of all examples (seeded)" in out
    rows = {line.split("|")[1].strip(): line for line in out.splitlines()
            if line.startswith("| ") and not line.startswith("| split")}
    counts = {}
    for name, line in rows.items():
        cells = [int(c) for c in line.strip("|").split("|")[1:]]
        counts[name] = cells[1:]
        assert cells[0] == sum(cells[1:])
    assert [sum(counts[s]) for s in ("train", "val", "test")] == [1257, 270, 270]
    ds = load_dataset("digits", seed=2)
    assert counts["val"] == ds.val.class_counts(10)
    np.testing.assert_array_equal(np.sum(list(counts.values()), axis=0),
                                  np.bincount(read_digits().train_y))


def test_normalization_does_not_depend_on_the_thread_count():
    # A zoo resumed with another thread count must train on the same inputs: the statistics
    # are summed in float64 and rounded to the float32 that normalizes.
    before = torch.get_num_threads()
    try:
        loaded = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            loaded.append(load_dataset("digits", size=28))
    finally:
        torch.set_num_threads(before)
    (a, b) = loaded
    assert a.mean == b.mean and a.std == b.std
    assert torch.equal(a.train.x, b.train.x) and torch.equal(a.test.x, b.test.x)
    assert a.mean == (float(torch.tensor(a.mean[0])),)  # a float32 value, as stored
