"""Class activation maps (CAM, Zhou et al. 2016) and infoCAM (Qin et al.), boxes and IoU.

For a network ``logits = W · GAP(features) + b`` with features ``[B, C, H, W]`` and class weights
``W`` ``[K, C]``:

* CAM of class y: ``Σ_c W[y, c] · features[:, c]``.
* infoCAM of class y: the same with ``W[y] − mean_{k≠y} W[k]`` (the point-wise MI direction), then a
  local region summation: as in the official code, a *full* convolution with an all-ones ``r × r``
  kernel (zero padding ``r − 1`` on every side, output ``[H + r − 1, W + r − 1]``), which the box
  step then resizes to the image. The full output is symmetric about the map's centre for every
  ``r``; a same-size convolution with an even ``r`` is shifted by half a cell.

A box is taken from a map upsampled to the image size: shift the map to a zero minimum, keep the
pixels at or above ``threshold`` (0.2) of its maximum, and box the largest connected component
(as in the CAM reference code). Boxes are inclusive pixel coordinates ``(x0, y0, x1, y1)``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

Box = tuple[int, int, int, int]


def class_maps(features: torch.Tensor, weight: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """CAM of ``classes[b]`` per image: ``[B, C, H, W]``, ``[K, C]``, ``[B]`` -> ``[B, H, W]``."""
    return torch.einsum("bchw,bc->bhw", features, weight[classes])


def contrast_weights(weight: torch.Tensor) -> torch.Tensor:
    """``[K, C]`` -> ``[K, C]``: row y is ``W[y] − mean_{k≠y} W[k]`` (needs K ≥ 2)."""
    num_classes = weight.shape[0]
    if num_classes < 2:
        raise ValueError("infoCAM needs at least two classes")
    others_mean = (weight.sum(dim=0, keepdim=True) - weight) / (num_classes - 1)
    return weight - others_mean


def region_sum(maps: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Sum of every ``kernel_size × kernel_size`` window: the full convolution of the official code.

    ``[B, H, W]`` -> ``[B, H + r − 1, W + r − 1]`` with ``r = kernel_size``: zero padding ``r − 1``
    on every side (``F.conv2d(cam, ones(1, C, r, r), padding=r − 1)`` in the official
    ``util_cam.py``, 4×4 on CUB, 3×3 on Tiny-ImageNet). Output cell ``(i, j)`` sums input cells
    ``i − r + 1 … i`` × ``j − r + 1 … j``. Resized to the image (:func:`upsample`), the result keeps
    the map's centre, so flipping the input flips the output.
    """
    if kernel_size < 1:
        raise ValueError(f"kernel_size={kernel_size} must be >= 1")
    pad = kernel_size - 1
    ones = torch.ones(1, 1, kernel_size, kernel_size, dtype=maps.dtype, device=maps.device)
    return F.conv2d(maps[:, None], ones, padding=pad)[:, 0]


def info_maps(
    features: torch.Tensor, weight: torch.Tensor, classes: torch.Tensor, kernel_size: int
) -> torch.Tensor:
    """infoCAM of ``classes[b]``: contrast weights, then region sums, ``[B, H + r − 1, W + r − 1]``
    (see :func:`region_sum`; resize with :func:`upsample` before taking boxes)."""
    return region_sum(class_maps(features, contrast_weights(weight), classes), kernel_size)


def upsample(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of ``[B, h, w]`` maps to ``[B, *size]``."""
    return F.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]


def box_from_map(heatmap: np.ndarray, threshold: float = 0.2) -> Box:
    """Box ``(x0, y0, x1, y1)`` (inclusive, x = column) of the largest connected component of
    ``heatmap − min ≥ threshold · (max − min)``. A constant map gives the whole image."""
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold={threshold} must lie in [0, 1]")
    heatmap = np.asarray(heatmap, dtype=np.float64)
    shifted = heatmap - heatmap.min()
    peak = shifted.max()
    height, width = heatmap.shape
    if peak <= 0:
        return (0, 0, width - 1, height - 1)
    labels, count = ndimage.label(shifted >= threshold * peak)
    sizes = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    rows, cols = np.nonzero(labels == 1 + int(np.argmax(sizes)))
    return (int(cols.min()), int(rows.min()), int(cols.max()), int(rows.max()))


def iou(a: Box, b: Box) -> float:
    """Intersection over union of two inclusive pixel boxes ``(x0, y0, x1, y1)``."""
    ix = min(a[2], b[2]) - max(a[0], b[0]) + 1
    iy = min(a[3], b[3]) - max(a[1], b[1]) + 1
    inter = max(ix, 0) * max(iy, 0)
    area_a = (a[2] - a[0] + 1) * (a[3] - a[1] + 1)
    area_b = (b[2] - b[0] + 1) * (b[3] - b[1] + 1)
    return inter / (area_a + area_b - inter)


def localisation_correct(
    predicted_class: int, true_class: int, predicted_box: Box, true_box: Box, min_iou: float = 0.5
) -> bool:
    """Top-1 localisation: the class is right and the box has IoU ≥ ``min_iou`` with the truth."""
    return predicted_class == true_class and iou(predicted_box, true_box) >= min_iou


def threshold_mask(heatmap: np.ndarray, threshold: float = 0.2) -> np.ndarray:
    """Mask of the pixels with ``heatmap − min ≥ threshold · (max − min)`` (every component)."""
    shifted = np.asarray(heatmap, dtype=np.float64) - np.min(heatmap)
    peak = shifted.max()
    if peak <= 0:
        return np.zeros(shifted.shape, dtype=bool)
    return shifted >= threshold * peak


def apply_mask(images: torch.Tensor, masks: np.ndarray, fill: float = 0.0) -> torch.Tensor:
    """A copy of ``images`` [B, C, H, W] whose pixels in ``masks`` [B, H, W] are set to ``fill``.

    The mask applies to every channel.
    """
    out = images.clone()
    out[torch.from_numpy(masks)[:, None].expand_as(out)] = fill
    return out


def shifted_masks(masks: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Each mask ``[B, H, W]`` rolled (circularly) by a random offset: same area, random place."""
    height, width = masks.shape[1:]
    return np.stack([np.roll(m, (int(rng.integers(height)), int(rng.integers(width))), axis=(0, 1))
                     for m in masks])
