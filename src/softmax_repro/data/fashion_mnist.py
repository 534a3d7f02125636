"""Fashion-MNIST from the official IDX files (Xiao et al. 2017), read offline.

The Debian package ``dataset-fashion-mnist`` installs the four official gzip files in
:data:`DEFAULT_ROOT`: ``{train,t10k}-images-idx3-ubyte.gz`` (``N×28×28`` uint8) and
``{train,t10k}-labels-idx1-ubyte.gz`` (``N`` uint8 in 0..9); 60,000 train / 10,000 test images,
6,000 / 1,000 per class.

IDX format: a big-endian header of magic ``0x0000 0x08 ndim`` (0x08 = unsigned byte), then ``ndim``
big-endian int32 sizes, then the data.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from softmax_repro.config import check_choice

DEFAULT_ROOT = Path("/usr/share/datasets/fashion-mnist")
NUM_CLASSES = 10
CLASS_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
               "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
_PREFIX = {"train": "train", "test": "t10k"}


def read_idx(path: str | Path) -> np.ndarray:
    """Read a (gzip-compressed or raw) IDX file of unsigned bytes into an array of its shape."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        data = handle.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte IDX file (magic {data[:4].hex()})")
    ndim = data[3]
    header = 4 + 4 * ndim
    shape = tuple(int(s) for s in np.frombuffer(data, dtype=">i4", count=ndim, offset=4))
    body = np.frombuffer(data, dtype=np.uint8, offset=header)
    if body.size != int(np.prod(shape)):
        raise ValueError(f"{path}: header says shape {shape} but holds {body.size} bytes of data")
    return body.reshape(shape)


def load_fashion_mnist(split: str, root: str | Path = DEFAULT_ROOT) -> tuple[Tensor, Tensor]:
    """Load one split.

    Args:
        split: ``"train"`` or ``"test"``.
        root: folder holding the official gzip IDX files.

    Returns:
        ``x`` ``[N, 1, 28, 28]`` float32 in ``[0, 1]`` and ``y`` ``[N]`` int64 in ``0..9``.

    Raises:
        ConfigError: unknown split.
        FileNotFoundError: the files are missing; the message says how to install them.
    """
    check_choice("split", split, tuple(_PREFIX))
    root = Path(root)
    images = root / f"{_PREFIX[split]}-images-idx3-ubyte.gz"
    labels = root / f"{_PREFIX[split]}-labels-idx1-ubyte.gz"
    missing = [p.name for p in (images, labels) if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"Fashion-MNIST files {missing} not found in {root}. Install them with "
            "`sudo apt-get install dataset-fashion-mnist` (Debian/Ubuntu; files land in "
            f"{DEFAULT_ROOT}), or download the official *-ubyte.gz files from "
            "https://github.com/zalandoresearch/fashion-mnist into a folder and pass root=."
        )
    x, y = read_idx(images), read_idx(labels)
    if x.ndim != 3 or y.ndim != 1 or x.shape[0] != y.shape[0]:
        raise ValueError(f"{root}: images {x.shape} and labels {y.shape} do not match")
    if y.size and y.max() >= NUM_CLASSES:
        raise ValueError(f"{labels} has label {int(y.max())}; Fashion-MNIST labels are 0..9")
    x_t = torch.from_numpy(x.copy()).float().div_(255.0).unsqueeze(1)
    return x_t, torch.from_numpy(y.astype(np.int64))
