"""Image classification sets from the HuggingFace hub, for the ``paper`` profiles.

One code path for both sources: :func:`load_hub_images` calls ``datasets.load_dataset`` with the
hub id from :data:`HUB_IMAGE_DATASETS`, or, given ``data_files``, with local parquet files in the
hub's own schema (how the tests run it offline, and how a reader with a downloaded copy runs it).

Schemas (dataset cards of ``uoft-cs/cifar10`` and ``uoft-cs/cifar100``): CIFAR-10 has columns
``img`` (Image, 32×32 RGB) and ``label`` (ClassLabel, 10 names); CIFAR-100 has ``img``,
``fine_label`` (100 classes) and ``coarse_label`` (20 superclasses). Splits: ``train`` (50,000) and
``test`` (10,000).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from softmax_repro.config import check_choice

if TYPE_CHECKING:
    import datasets


@dataclass(frozen=True)
class HubImageSpec:
    """Where an image set lives on the hub and which columns hold the image and the label."""

    repo: str
    image_column: str
    label_column: str
    num_classes: int
    splits: tuple[str, ...] = ("train", "test")


HUB_IMAGE_DATASETS: dict[str, HubImageSpec] = {
    "cifar10": HubImageSpec("uoft-cs/cifar10", "img", "label", 10),
    "cifar100": HubImageSpec("uoft-cs/cifar100", "img", "fine_label", 100),
    "cifar100-coarse": HubImageSpec("uoft-cs/cifar100", "img", "coarse_label", 20),
}
"""Registry of hub image sets by short name."""


def load_hub_images(
    name: str,
    split: str,
    *,
    data_files: str | Path | Sequence[str | Path] | None = None,
    cache_dir: str | Path | None = None,
) -> tuple[Tensor, Tensor]:
    """Load one split as tensors.

    Args:
        name: a key of :data:`HUB_IMAGE_DATASETS`, e.g. ``"cifar10"``.
        split: ``"train"`` or ``"test"``.
        data_files: local parquet file(s) in the hub schema holding this split; ``None`` loads the
            hub id (needs network or a populated HuggingFace cache).
        cache_dir: the ``datasets`` cache folder (default: HuggingFace's).

    Returns:
        ``x`` ``[N, C, H, W]`` float32 in ``[0, 1]``; ``y`` ``[N]`` int64 in ``0..num_classes-1``.

    Raises:
        ConfigError: unknown ``name`` or ``split`` (before anything is loaded).
        ValueError: the loaded table lacks the expected columns or has out-of-range labels.
    """
    check_choice("dataset", name, tuple(HUB_IMAGE_DATASETS))
    spec = HUB_IMAGE_DATASETS[name]
    check_choice("split", split, spec.splits)
    table = load_hub_table(name, spec.repo, split, [spec.image_column, spec.label_column],
                           data_files=data_files, cache_dir=cache_dir)
    columns = table.with_format("numpy")[:]
    return _images_to_tensor(columns[spec.image_column]), _labels_to_tensor(
        columns[spec.label_column], spec.num_classes)


def load_hub_table(
    name: str,
    repo: str,
    split: str,
    columns: Sequence[str],
    *,
    data_files: str | Path | Sequence[str | Path] | None = None,
    cache_dir: str | Path | None = None,
) -> datasets.Dataset:
    """One split of a hub set (``repo``) or of local parquet ``data_files`` in its schema, reduced
    to ``columns``.

    Raises:
        ValueError: the table lacks one of ``columns`` (the message names it and ``name``).
    """
    import datasets  # heavy import, only needed on this path

    cache = None if cache_dir is None else str(cache_dir)
    if data_files is None:
        table = datasets.load_dataset(repo, split=split, cache_dir=cache)
    else:
        single = isinstance(data_files, str | Path)
        files = [str(data_files)] if single else [str(f) for f in data_files]
        table = datasets.load_dataset("parquet", data_files={split: files}, split=split,
                                      cache_dir=cache)
    missing = set(columns) - set(table.column_names)
    if missing:
        raise ValueError(
            f"{name} ({split}) lacks column(s) {sorted(missing)}; found {table.column_names}"
        )
    return table.select_columns(list(columns))


def _images_to_tensor(images: np.ndarray) -> Tensor:
    """``[N, H, W, C]`` or ``[N, H, W]`` uint8 -> ``[N, C, H, W]`` float32 in ``[0, 1]``."""
    array = np.asarray(images)
    if array.ndim == 3:
        array = array[..., None]
    if array.ndim != 4 or array.dtype != np.uint8:
        raise ValueError(f"expected uint8 images [N, H, W, C], got {array.dtype} {array.shape}")
    return torch.from_numpy(np.ascontiguousarray(array.transpose(0, 3, 1, 2))).float() / 255.0


def _labels_to_tensor(labels: np.ndarray, num_classes: int) -> Tensor:
    y = torch.from_numpy(np.asarray(labels).astype(np.int64))
    if y.numel() and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(f"labels must lie in 0..{num_classes - 1}, got {y.min()}..{y.max()}")
    return y
