"""Weakly-labelled localisation sets with boxes from the HuggingFace hub (chapter 04, ``paper``).

One code path for both sources, as in :mod:`softmax_repro.data.hub`: :func:`load_hub_localisation`
calls ``datasets.load_dataset`` with the hub id from :data:`HUB_LOCALISATION_DATASETS`, or, given
``data_files``, with local parquet files in the hub's own schema (how the tests run it offline, and
how a reader with a downloaded copy runs it; :func:`local_split_files` finds a split's files in
such a copy).

Schema of CUB-200-2011 (dataset card of ``bentrevett/caltech-ucsd-birds-200-2011``): parquet
files ``data/{train,test}-0000k-of-00002.parquet`` with columns ``image`` (Image, variable size,
e.g. 500×375, a few grayscale), ``label`` (ClassLabel, 200 species ``001.Black_footed_Albatross``
…) and ``bbox`` (four numbers ``[x_min, y_min, x_max, y_max]`` in pixels of the original image,
not ``x, y, w, h``). Splits ``train`` (5,994 images) and ``test`` (5,794).

Tiny-ImageNet on the hub (``zh-plus/tiny-imagenet``: ``image``, ``label``; splits ``train`` and
``valid``) has no boxes, so it is not registered: its localisation stays not attempted.
"""

from __future__ import annotations

import glob
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from softmax_repro.config import ConfigError, check_choice, check_int
from softmax_repro.data.hub import (
    HubImageSpec,
    _images_to_tensor,
    _labels_to_tensor,
    load_hub_table,
)
from softmax_repro.data.localization import LocalisationSet

BOX_TOLERANCE = 1.0
"""How far (pixels) a box may reach beyond the image before it is an error; within it, clipped."""


@dataclass(frozen=True)
class HubLocalisationSpec(HubImageSpec):
    """A :class:`~softmax_repro.data.hub.HubImageSpec` whose rows also hold a box column."""

    box_column: str = "bbox"


HUB_LOCALISATION_DATASETS: dict[str, HubLocalisationSpec] = {
    "cub200": HubLocalisationSpec("bentrevett/caltech-ucsd-birds-200-2011", "image", "label",
                                  200, box_column="bbox"),
}
"""Registry of hub localisation sets by short name."""


def load_hub_localisation(
    name: str,
    split: str,
    *,
    image_size: int,
    data_files: str | Path | Sequence[str | Path] | None = None,
    cache_dir: str | Path | None = None,
) -> LocalisationSet:
    """Load one split, every image resized to ``image_size × image_size`` with its box.

    Images are decoded, converted to RGB (grayscale is repeated over three channels) and resized
    with PIL's bilinear filter, ignoring the aspect ratio. A box ``[x_min, y_min, x_max, y_max]``
    is read as continuous pixel-edge coordinates of the original ``W × H`` image and becomes the
    inclusive box of every resized pixel it overlaps: ``x0 = floor(x_min · S/W)``,
    ``x1 = ceil(x_max · S/W) − 1`` (likewise y with ``S/H``), clipped to ``0..S−1``.

    Args:
        name: a key of :data:`HUB_LOCALISATION_DATASETS`, e.g. ``"cub200"``.
        split: ``"train"`` or ``"test"``.
        image_size: side ``S`` of the resized square images, in pixels (>= 2).
        data_files: local parquet file(s) in the hub schema holding this split; ``None`` loads the
            hub id (needs network or a populated HuggingFace cache).
        cache_dir: the ``datasets`` cache folder (default: HuggingFace's).

    Returns:
        A :class:`LocalisationSet` with ``images`` float32 ``[N, 3, S, S]`` in ``[0, 1]``,
        ``labels`` int64 ``[N]`` in ``0..num_classes−1`` and ``boxes`` int64 ``[N, 4]``.

    Raises:
        ConfigError: unknown ``name`` or ``split``, or ``image_size`` < 2 (before loading).
        ValueError: a column is missing, a label is out of range, or a box is not four numbers,
            has ``x_max < x_min`` / ``y_max < y_min`` or reaches more than
            :data:`BOX_TOLERANCE` pixels outside its image (the message names the column).
    """
    check_choice("dataset", name, tuple(HUB_LOCALISATION_DATASETS))
    spec = HUB_LOCALISATION_DATASETS[name]
    check_choice("split", split, spec.splits)
    check_int("image_size", image_size, 2)
    columns = [spec.image_column, spec.label_column, spec.box_column]
    table = load_hub_table(name, spec.repo, split, columns, data_files=data_files,
                           cache_dir=cache_dir)
    count = len(table)
    pixels = np.empty((count, image_size, image_size, 3), dtype=np.uint8)
    boxes = np.empty((count, 4), dtype=np.int64)
    labels = []
    for i, example in enumerate(table):
        image = example[spec.image_column].convert("RGB")
        where = f"{name} ({split}) column {spec.box_column!r}, row {i}"
        boxes[i] = resize_box(example[spec.box_column], image.size, image_size, where=where)
        resized = image.resize((image_size, image_size), Image.Resampling.BILINEAR)
        pixels[i] = np.asarray(resized, dtype=np.uint8)
        labels.append(example[spec.label_column])
    return LocalisationSet(
        images=_images_to_tensor(pixels),
        labels=_labels_to_tensor(np.asarray(labels, dtype=np.int64), spec.num_classes),
        boxes=torch.from_numpy(boxes),
    )


def resize_box(
    box: Sequence[float], original_size: tuple[int, int], image_size: int, *, where: str = "bbox"
) -> tuple[int, int, int, int]:
    """The inclusive ``(x0, y0, x1, y1)`` box in a resized ``S × S`` image of a
    ``[x_min, y_min, x_max, y_max]`` box of an image of ``original_size = (W, H)`` pixels.

    Raises:
        ValueError: not four finite numbers, ``x_max < x_min`` or ``y_max < y_min``, or a
            coordinate more than :data:`BOX_TOLERANCE` pixels outside ``[0, W] × [0, H]``
            (the message starts with ``where``).
    """
    try:
        values = [float(v) for v in box]
    except (TypeError, ValueError):
        values = []
    if len(values) != 4 or not all(math.isfinite(v) for v in values):
        raise ValueError(f"{where}: expected 4 finite numbers [x_min, y_min, x_max, y_max], "
                         f"got {box!r}")
    x_min, y_min, x_max, y_max = values
    width, height = original_size
    if x_max < x_min or y_max < y_min:
        raise ValueError(f"{where}: box {values} has x_max < x_min or y_max < y_min")
    if min(x_min, y_min) < -BOX_TOLERANCE or x_max > width + BOX_TOLERANCE or (
            y_max > height + BOX_TOLERANCE):
        raise ValueError(f"{where}: box {values} lies outside the {width}×{height} image")
    scale_x, scale_y = image_size / width, image_size / height
    last = image_size - 1
    x0 = min(max(math.floor(x_min * scale_x), 0), last)
    y0 = min(max(math.floor(y_min * scale_y), 0), last)
    x1 = min(max(math.ceil(x_max * scale_x) - 1, x0), last)
    y1 = min(max(math.ceil(y_max * scale_y) - 1, y0), last)
    return x0, y0, x1, y1


def local_split_files(data_files: str | Path, split: str) -> list[Path]:
    """The parquet files of ``split`` in a local copy of a hub set.

    Args:
        data_files: a directory (searched recursively for ``{split}-*.parquet`` as in the hub's
            ``data/`` folder, ``{split}.parquet``, or ``*.parquet`` inside a folder named
            ``split``), or a glob pattern containing the placeholder ``{split}``, e.g.
            ``"/data/cub/{split}-*.parquet"``.
        split: the split name, e.g. ``"train"``.

    Raises:
        ConfigError: ``data_files`` is neither a directory nor a pattern with ``{split}``.
        FileNotFoundError: no file matches.
    """
    text = str(data_files)
    if "{split}" in text:
        pattern = os.path.expanduser(text.replace("{split}", split))
        files = sorted(Path(f) for f in glob.glob(pattern, recursive=True))
    elif Path(text).expanduser().is_dir():
        files = sorted(p for p in Path(text).expanduser().rglob("*.parquet")
                       if p.stem == split or p.stem.startswith(f"{split}-")
                       or p.parent.name == split)
    else:
        raise ConfigError(
            f"loc_data_files={text!r} is not allowed; give a directory of parquet files or a glob "
            "pattern containing '{split}', e.g. '/data/cub/{split}-*.parquet'"
        )
    if not files:
        raise FileNotFoundError(f"no parquet files of split {split!r} found under {text!r}")
    return files
