"""A weakly-labelled localisation set built from embedded images with boxes known by construction.

Each example is one scikit-learn Digits image (8×8, bundled with scikit-learn, nothing downloaded),
enlarged by an integer factor (nearest neighbour) and pasted at a uniformly random position on a
larger canvas of Gaussian noise. The label is the digit; the box is the tight box of the digit's
ink (pixels > 0) on the canvas, inclusive ``(x0, y0, x1, y1)`` with x the column. Training uses the
labels only (weak supervision); boxes are for evaluation.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from sklearn.datasets import load_digits


@dataclasses.dataclass(frozen=True)
class LocalisationSet:
    """Canvases, labels and ground-truth boxes.

    Attributes:
        images: float32 ``[N, C, S, S]``: ``C = 1`` for Digits canvases (ink in [0, 1] plus
            noise), ``C = 3`` for RGB photographs (e.g. CUB-200-2011 from the hub, in [0, 1]).
        labels: int64 ``[N]`` classes (digits 0..9, or the photo set's classes).
        boxes: int64 ``[N, 4]`` inclusive ``(x0, y0, x1, y1)`` of the ink.
    """

    images: torch.Tensor
    labels: torch.Tensor
    boxes: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def place_objects(
    objects: np.ndarray,
    labels: np.ndarray,
    canvas_size: int,
    noise_std: float,
    rng: np.random.Generator,
) -> LocalisationSet:
    """Paste each ``objects[i]`` (``[N, h, w]``, values in [0, 1]) at a random position on a noisy
    ``canvas_size × canvas_size`` canvas (pixel = noise + ink).

    Raises:
        ValueError: an object is larger than the canvas.
    """
    count, height, width = objects.shape
    if height > canvas_size or width > canvas_size:
        raise ValueError(f"objects of {height}×{width} do not fit a {canvas_size} canvas")
    canvases = rng.normal(0.0, noise_std, size=(count, canvas_size, canvas_size))
    tops = rng.integers(0, canvas_size - height + 1, size=count)
    lefts = rng.integers(0, canvas_size - width + 1, size=count)
    boxes = np.zeros((count, 4), dtype=np.int64)
    for i in range(count):
        top, left = tops[i], lefts[i]
        canvases[i, top : top + height, left : left + width] += objects[i]
        rows, cols = np.nonzero(objects[i] > 0)
        boxes[i] = (left + cols.min(), top + rows.min(), left + cols.max(), top + rows.max())
    return LocalisationSet(
        images=torch.from_numpy(canvases[:, None].astype(np.float32)),
        labels=torch.from_numpy(labels.astype(np.int64)),
        boxes=torch.from_numpy(boxes),
    )


def load_digit_localisation(
    num_train: int,
    num_test: int,
    *,
    canvas_size: int = 32,
    scale: int = 2,
    noise_std: float = 0.3,
    test_fraction: float = 0.3,
    seed: int = 0,
) -> tuple[LocalisationSet, LocalisationSet]:
    """Train and test localisation sets from disjoint halves of the Digits images.

    The 1,797 Digits images are split (``test_fraction`` held out, by ``seed``); each set draws its
    source images with replacement from its own part, so test canvases show unseen digits.

    Args:
        num_train: training canvases.
        num_test: test canvases.
        canvas_size: side of the square canvas in pixels.
        scale: enlargement factor of the 8×8 digits (object side ``8 · scale``).
        noise_std: standard deviation of the background noise (ink is in [0, 1]).
        test_fraction: share of the source images reserved for the test canvases.
        seed: seeds the split, the draws, the positions and the noise.
    """
    if num_train < 1 or num_test < 1:
        raise ValueError(f"num_train={num_train} and num_test={num_test} must be >= 1")
    if scale < 1:
        raise ValueError(f"scale={scale} must be >= 1")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction={test_fraction} must lie in (0, 1)")
    digits = load_digits()
    ink = digits.images / 16.0
    ink = np.kron(ink, np.ones((1, scale, scale)))
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(ink))
    cut = round(len(ink) * test_fraction)
    test_pool, train_pool = order[:cut], order[cut:]
    sets = []
    for pool, count in ((train_pool, num_train), (test_pool, num_test)):
        picks = rng.choice(pool, size=count, replace=True)
        sets.append(place_objects(ink[picks], digits.target[picks], canvas_size, noise_std, rng))
    return sets[0], sets[1]
