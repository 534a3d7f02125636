"""Data sources and transforms: exact long-tail counts, caching with integrity checks."""

import numpy as np
import pytest
import torch

from softmax_repro.config import ConfigError
from softmax_repro.data import digits, longtail, mnist1d, registry


@pytest.mark.parametrize(("imbalance", "total"), [(10, 20_431), (100, 12_406), (200, 11_203)])
def test_longtail_counts_match_cifar10_lt_sizes(imbalance, total):
    counts = longtail.longtail_counts(5000, 10, imbalance)
    assert sum(counts) == total  # CIFAR-10-LT training-set sizes (Cui et al. 2019)
    assert counts[0] == 5000 and counts[-1] == int(5000 / imbalance)


def test_longtail_cifar100_sizes():
    assert sum(longtail.longtail_counts(500, 100, 100)) == 10_847


def test_imbalance_one_is_balanced_and_invalid_values_raise():
    assert longtail.longtail_counts(7, 3, 1) == [7, 7, 7]
    with pytest.raises(ConfigError, match=r"imbalance=0\.5"):
        longtail.longtail_counts(100, 10, 0.5)
    with pytest.raises(ConfigError, match=r"leaves class 9 empty"):
        longtail.longtail_counts(50, 10, 100)


def test_subsample_gives_exact_class_counts_and_depends_on_seed():
    labels = torch.arange(10).repeat(100)
    counts = longtail.longtail_counts(100, 10, 10)
    idx = longtail.subsample_longtail(labels, counts, seed=0)
    assert torch.bincount(labels[idx], minlength=10).tolist() == counts
    assert not torch.equal(idx, longtail.subsample_longtail(labels, counts, seed=1))
    assert torch.equal(idx, longtail.subsample_longtail(labels, counts, seed=0))
    with pytest.raises(ConfigError, match="class 0 has 100 examples but 101"):
        longtail.subsample_longtail(labels, [101] * 10, seed=0)


def test_mnist1d_generation_is_cached_and_verified(tmp_path, monkeypatch):
    monkeypatch.setenv(registry.CACHE_ENV, str(tmp_path))
    first = mnist1d.load_mnist1d(200, seed=3)
    assert first.x_train.shape == (160, 40) and first.x_test.shape == (40, 40)
    assert first.y_train.dtype == torch.int64 and int(first.y_train.max()) <= 9
    cached = tmp_path / "mnist1d_200_3.npz"
    assert cached.exists() and (tmp_path / "mnist1d_200_3.npz.sha256").exists()
    again = mnist1d.load_mnist1d(200, seed=3)
    assert torch.equal(first.x_train, again.x_train)
    cached.write_bytes(cached.read_bytes()[:-10])  # truncate the cache
    with pytest.raises(registry.DataIntegrityError, match=r"mnist1d_200_3\.npz has sha256"):
        mnist1d.load_mnist1d(200, seed=3)


def test_registered_file_verification(tmp_path):
    path = tmp_path / "blob.bin"
    path.write_bytes(b"hello")
    registry.REGISTRY["toy"] = registry.DataSource(
        "toy", "blob.bin", registry.sha256_file(path), "make toy", "here", "MIT"
    )
    try:
        assert registry.verify_registered("toy", path) == path
        path.write_bytes(b"hellO")
        with pytest.raises(registry.DataIntegrityError, match="rebuild it with: make toy"):
            registry.verify_registered("toy", path)
        with pytest.raises(registry.DataIntegrityError, match="missing"):
            registry.verify_registered("toy", tmp_path / "nothing")
    finally:
        del registry.REGISTRY["toy"]


def test_digits_split_is_stratified_and_scaled():
    split = digits.load_digits_split(test_fraction=0.3, seed=0)
    assert split.x_train.shape[1] == 64 and float(split.x_train.min()) >= 0
    assert float(split.x_train.max()) <= 1
    counts = np.bincount(split.y_test.numpy())
    assert counts.min() >= 50 and split.x_train.shape[0] + split.x_test.shape[0] == 1797
