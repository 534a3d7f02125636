"""The weakly-labelled localisation set: shapes, known boxes, determinism, disjoint sources."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from softmax_repro.data.localization import load_digit_localisation, place_objects


def test_place_objects_boxes_are_the_ink_by_hand():
    obj = np.zeros((2, 4, 4))
    obj[0, 1:3, 2] = 1.0  # ink rows 1–2, col 2
    obj[1, 0, 0] = 0.5
    obj[1, 3, 3] = 0.5  # ink spans the whole object
    placed = place_objects(obj, np.array([3, 7]), canvas_size=10, noise_std=0.0,
                           rng=np.random.default_rng(0))
    assert placed.images.shape == (2, 1, 10, 10) and placed.images.dtype == torch.float32
    assert placed.labels.tolist() == [3, 7]
    for i in range(2):
        x0, y0, x1, y1 = placed.boxes[i].tolist()
        ink = placed.images[i, 0].numpy()
        rows, cols = np.nonzero(ink)
        assert (x0, y0, x1, y1) == (cols.min(), rows.min(), cols.max(), rows.max())
        assert ink.sum() == pytest.approx(obj[i].sum())
    x0, y0, x1, y1 = placed.boxes[0].tolist()
    assert x1 == x0 and y1 - y0 == 1


def test_place_objects_rejects_oversized_objects():
    with pytest.raises(ValueError, match="fit"):
        place_objects(np.ones((1, 6, 6)), np.array([0]), 5, 0.1, np.random.default_rng(0))


def test_digit_localisation_set():
    train, test = load_digit_localisation(50, 20, canvas_size=24, scale=2, noise_std=0.0, seed=3)
    assert len(train) == 50 and len(test) == 20
    assert train.images.shape == (50, 1, 24, 24)
    assert set(train.labels.tolist()) <= set(range(10))
    boxes = train.boxes.numpy()
    assert (boxes[:, 0] <= boxes[:, 2]).all() and (boxes[:, 1] <= boxes[:, 3]).all()
    assert (boxes >= 0).all() and (boxes < 24).all()
    assert ((boxes[:, 2] - boxes[:, 0]) < 16).all()  # inside the 16×16 enlarged digit
    for image, (x0, y0, x1, y1) in zip(train.images[:, 0], boxes, strict=True):
        inside = image[y0 : y1 + 1, x0 : x1 + 1].sum()
        assert float(inside) == pytest.approx(float(image.sum()), rel=1e-6)  # all ink in the box
        assert float(image.max()) <= 1.0 and float(image.min()) >= 0.0


def test_digit_localisation_is_deterministic_and_noisy():
    a, _ = load_digit_localisation(10, 5, noise_std=0.3, seed=1)
    b, _ = load_digit_localisation(10, 5, noise_std=0.3, seed=1)
    c, _ = load_digit_localisation(10, 5, noise_std=0.3, seed=2)
    assert torch.equal(a.images, b.images) and torch.equal(a.boxes, b.boxes)
    assert not torch.equal(a.images, c.images)
    background = a.images[0, 0].clone()
    x0, y0, x1, y1 = a.boxes[0].tolist()
    background[y0 : y1 + 1, x0 : x1 + 1] = float("nan")
    assert float(np.nanstd(background.numpy())) == pytest.approx(0.3, rel=0.25)


def test_train_and_test_canvases_use_disjoint_digit_images():
    """With no noise and scale 1 each canvas shows one 8×8 source image; none is shared."""
    train, test = load_digit_localisation(400, 200, canvas_size=8, scale=1, noise_std=0.0, seed=0)
    train_set = {tuple(img.flatten().tolist()) for img in train.images}
    test_set = {tuple(img.flatten().tolist()) for img in test.images}
    assert train_set.isdisjoint(test_set)


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_train"):
        load_digit_localisation(0, 5)
    with pytest.raises(ValueError, match="test_fraction"):
        load_digit_localisation(5, 5, test_fraction=1.0)
