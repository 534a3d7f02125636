"""Hub image loader: a tiny local parquet file in the hub's schema, through the same code path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from softmax_repro.config import ConfigError
from softmax_repro.data.hub import HUB_IMAGE_DATASETS, load_hub_images

datasets = pytest.importorskip("datasets")
Image = pytest.importorskip("PIL.Image")


@pytest.fixture(autouse=True)
def _offline(hub_offline: None) -> None:
    """Every test here runs with the HuggingFace libraries offline (``conftest.hub_offline``)."""


def _pixels(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)


def _write_cifar10(path: Path, pixels: np.ndarray, labels: list[int]) -> None:
    features = datasets.Features({
        "img": datasets.Image(),
        "label": datasets.ClassLabel(names=[f"c{i}" for i in range(10)]),
    })
    table = datasets.Dataset.from_dict(
        {"img": [Image.fromarray(p) for p in pixels], "label": labels}, features=features)
    table.to_parquet(str(path))


def _write_cifar100(path: Path, pixels: np.ndarray, fine: list[int], coarse: list[int]) -> None:
    features = datasets.Features({
        "img": datasets.Image(),
        "fine_label": datasets.ClassLabel(names=[f"f{i}" for i in range(100)]),
        "coarse_label": datasets.ClassLabel(names=[f"g{i}" for i in range(20)]),
    })
    table = datasets.Dataset.from_dict(
        {"img": [Image.fromarray(p) for p in pixels], "fine_label": fine, "coarse_label": coarse},
        features=features)
    table.to_parquet(str(path))


def test_registry_names_the_hub_schema() -> None:
    assert HUB_IMAGE_DATASETS["cifar10"].repo == "uoft-cs/cifar10"
    cifar10 = HUB_IMAGE_DATASETS["cifar10"]
    assert (cifar10.image_column, cifar10.label_column) == ("img", "label")
    assert HUB_IMAGE_DATASETS["cifar100"].label_column == "fine_label"
    assert HUB_IMAGE_DATASETS["cifar100"].num_classes == 100


def test_cifar10_parquet_roundtrip_is_exact(tmp_path: Path) -> None:
    pixels = _pixels(5)
    _write_cifar10(tmp_path / "train.parquet", pixels, [3, 0, 9, 3, 1])
    x, y = load_hub_images("cifar10", "train", data_files=tmp_path / "train.parquet",
                           cache_dir=tmp_path / "cache")
    assert x.shape == (5, 3, 32, 32) and x.dtype == torch.float32
    assert y.tolist() == [3, 0, 9, 3, 1] and y.dtype == torch.int64
    expected = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255.0
    assert torch.equal(x, expected)  # PNG is lossless: channel order and scaling exact


def test_cifar100_fine_and_coarse_labels(tmp_path: Path) -> None:
    pixels = _pixels(3, seed=1)
    files = [tmp_path / "a.parquet", tmp_path / "b.parquet"]
    _write_cifar100(files[0], pixels[:2], [99, 0], [19, 4])
    _write_cifar100(files[1], pixels[2:], [42], [7])
    x, y = load_hub_images("cifar100", "test", data_files=files, cache_dir=tmp_path / "cache")
    assert x.shape == (3, 3, 32, 32) and y.tolist() == [99, 0, 42]
    _, coarse = load_hub_images("cifar100-coarse", "test", data_files=files,
                                cache_dir=tmp_path / "cache")
    assert coarse.tolist() == [19, 4, 7]


def test_wrong_schema_names_the_missing_column(tmp_path: Path) -> None:
    _write_cifar10(tmp_path / "c10.parquet", _pixels(2), [0, 1])
    with pytest.raises(ValueError, match="fine_label"):
        load_hub_images("cifar100", "train", data_files=tmp_path / "c10.parquet",
                        cache_dir=tmp_path / "cache")


def test_bad_name_or_split_fails_before_loading(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"dataset='cifar11'.*'cifar10'"):
        load_hub_images("cifar11", "train", data_files=tmp_path / "none.parquet")
    with pytest.raises(ConfigError, match="split='validation'"):
        load_hub_images("cifar10", "validation", data_files=tmp_path / "none.parquet")
