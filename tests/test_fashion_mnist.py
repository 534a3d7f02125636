"""Fashion-MNIST IDX reader: tiny hand-written IDX files, the error message, the real files."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from softmax_repro.config import ConfigError
from softmax_repro.data.fashion_mnist import DEFAULT_ROOT, load_fashion_mnist, read_idx


def _write_idx(path: Path, array: np.ndarray, compress: bool = True) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}i", *array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    if compress:
        with gzip.open(path, "wb") as handle:
            handle.write(payload)
    else:
        path.write_bytes(payload)


def _tiny_split(root: Path, prefix: str, images: np.ndarray, labels: np.ndarray) -> None:
    _write_idx(root / f"{prefix}-images-idx3-ubyte.gz", images)
    _write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", labels)


def test_read_idx_roundtrip_raw_and_gzip(tmp_path: Path) -> None:
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    _write_idx(tmp_path / "a.gz", array)
    _write_idx(tmp_path / "a.idx", array, compress=False)
    np.testing.assert_array_equal(read_idx(tmp_path / "a.gz"), array)
    np.testing.assert_array_equal(read_idx(tmp_path / "a.idx"), array)


def test_read_idx_rejects_bad_magic_and_truncation(tmp_path: Path) -> None:
    (tmp_path / "bad.idx").write_bytes(bytes([0, 0, 0x0D, 1, 0, 0, 0, 1, 5]))  # float type
    with pytest.raises(ValueError, match="not an unsigned-byte IDX"):
        read_idx(tmp_path / "bad.idx")
    (tmp_path / "short.idx").write_bytes(bytes([0, 0, 0x08, 1]) + struct.pack(">i", 5) + b"ab")
    with pytest.raises(ValueError, match="holds 2 bytes"):
        read_idx(tmp_path / "short.idx")


def test_load_tiny_split(tmp_path: Path) -> None:
    images = np.zeros((3, 28, 28), dtype=np.uint8)
    images[0, 0, 0], images[1, 5, 7], images[2] = 255, 51, 102
    labels = np.array([9, 0, 4], dtype=np.uint8)
    _tiny_split(tmp_path, "t10k", images, labels)
    x, y = load_fashion_mnist("test", root=tmp_path)
    assert x.shape == (3, 1, 28, 28) and x.dtype == torch.float32
    assert y.tolist() == [9, 0, 4] and y.dtype == torch.int64
    assert x[0, 0, 0, 0] == 1.0 and x[0].sum() == 1.0
    assert x[1, 0, 5, 7] == pytest.approx(0.2)
    assert torch.allclose(x[2], torch.full((1, 28, 28), 0.4))


def test_mismatched_counts_and_bad_labels(tmp_path: Path) -> None:
    _tiny_split(tmp_path, "train", np.zeros((2, 28, 28), np.uint8), np.array([1], np.uint8))
    with pytest.raises(ValueError, match="do not match"):
        load_fashion_mnist("train", root=tmp_path)
    _tiny_split(tmp_path, "train", np.zeros((1, 28, 28), np.uint8), np.array([10], np.uint8))
    with pytest.raises(ValueError, match=r"0\.\.9"):
        load_fashion_mnist("train", root=tmp_path)


def test_missing_files_say_how_to_install(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist("train", root=tmp_path)


def test_unknown_split_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"split='val'.*'train', 'test'"):
        load_fashion_mnist("val", root=tmp_path)


@pytest.mark.skipif(not (DEFAULT_ROOT / "t10k-labels-idx1-ubyte.gz").is_file(),
                    reason="dataset-fashion-mnist is not installed")
def test_official_test_split_has_1000_per_class() -> None:
    x, y = load_fashion_mnist("test")
    assert x.shape == (10_000, 1, 28, 28)
    assert torch.bincount(y).tolist() == [1000] * 10
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
