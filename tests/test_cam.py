"""CAM / infoCAM maps on hand-built feature maps; boxes, IoU and masks against hand values."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import signal

from softmax_repro.engine.models import GapCNN
from softmax_repro.methods import cam


def hand_features() -> torch.Tensor:
    """One image, two channels on a 2×3 grid."""
    return torch.tensor([[[[1.0, 0.0, 2.0], [0.0, 3.0, 0.0]],
                          [[0.0, 1.0, 1.0], [2.0, 0.0, 0.0]]]])


WEIGHT = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 2.0]])


def test_class_map_is_weighted_channel_sum():
    maps = cam.class_maps(hand_features(), WEIGHT, torch.tensor([2]))
    expected = torch.tensor([[[2.0, 2.0, 6.0], [4.0, 6.0, 0.0]]])  # 2·ch0 + 2·ch1
    torch.testing.assert_close(maps, expected)
    torch.testing.assert_close(cam.class_maps(hand_features(), WEIGHT, torch.tensor([0])),
                               hand_features()[:, 0])


def test_contrast_weights_subtract_mean_of_other_classes():
    expected = torch.tensor([[0.0, -1.5], [-1.5, 0.0], [1.5, 1.5]])
    torch.testing.assert_close(cam.contrast_weights(WEIGHT), expected)
    with pytest.raises(ValueError, match="two classes"):
        cam.contrast_weights(WEIGHT[:1])


def test_region_sum_is_the_official_full_convolution():
    delta = torch.zeros(1, 5, 5)
    delta[0, 2, 2] = 1.0
    odd = cam.region_sum(delta, 3)[0]  # output 7×7; cell (i, j) sums inputs i−2..i × j−2..j
    expected = torch.zeros(7, 7)
    expected[2:5, 2:5] = 1.0
    torch.testing.assert_close(odd, expected)
    even = cam.region_sum(delta, 4)[0]  # output 8×8; the official CUB kernel
    expected = torch.zeros(8, 8)
    expected[2:6, 2:6] = 1.0
    torch.testing.assert_close(even, expected)
    ones = cam.region_sum(torch.ones(1, 2, 2), 2)[0]
    torch.testing.assert_close(ones, torch.tensor([[1.0, 2, 1], [2, 4, 2], [1, 2, 1]]))
    # the reference: scipy's full 2-D convolution with an all-ones window
    rng = np.random.default_rng(0)
    maps = rng.standard_normal((2, 6, 5))
    for r in (1, 3, 4):
        ours = cam.region_sum(torch.from_numpy(maps), r).numpy()
        reference = np.stack([signal.convolve2d(m, np.ones((r, r)), mode="full") for m in maps])
        np.testing.assert_allclose(ours, reference, atol=1e-12)
    with pytest.raises(ValueError, match="kernel_size"):
        cam.region_sum(delta, 0)


@pytest.mark.parametrize("kernel_size", [3, 4])
def test_region_sum_resized_keeps_the_map_centred(kernel_size):
    """A same-size window of even side shifts the map by half a cell; the full convolution, resized
    to the image as the official code does, commutes with flips (no shift)."""
    rng = np.random.default_rng(1)
    maps = torch.from_numpy(rng.random((3, 8, 8)))
    summed = cam.upsample(cam.region_sum(maps, kernel_size), (32, 32))
    flipped = cam.upsample(cam.region_sum(maps.flip(-1, -2), kernel_size), (32, 32))
    torch.testing.assert_close(flipped, summed.flip(-1, -2))
    # a single hot cell at the centre of an even map gives a map peaked symmetrically
    delta = torch.zeros(1, 8, 8)
    delta[0, 3:5, 3:5] = 1.0
    up = cam.upsample(cam.region_sum(delta, kernel_size), (32, 32))[0]
    rows, cols = torch.nonzero(up == up.max(), as_tuple=True)
    assert rows.float().mean().item() == pytest.approx(15.5)
    assert cols.float().mean().item() == pytest.approx(15.5)


def test_info_map_by_hand():
    maps = cam.info_maps(hand_features(), WEIGHT, torch.tensor([0]), kernel_size=1)
    expected = -1.5 * hand_features()[:, 1]  # contrast row 0 = (0, −1.5)
    torch.testing.assert_close(maps, expected)
    summed = cam.info_maps(hand_features(), WEIGHT, torch.tensor([2]), kernel_size=3)
    row2 = 1.5 * hand_features().sum(dim=1)  # contrast row 2 = (1.5, 1.5)
    assert summed.shape[-2:] == (row2.shape[-2] + 2, row2.shape[-1] + 2)
    # full-convolution cell (2, 2) sums input cells 0..2 × 0..2
    torch.testing.assert_close(summed[0, 2, 2], row2[0, :3, :3].sum())
    torch.testing.assert_close(summed[0, 0, 0], row2[0, 0, 0])


def test_upsample_keeps_constant_maps():
    up = cam.upsample(torch.full((2, 4, 4), 3.0), (8, 8))
    assert up.shape == (2, 8, 8)
    torch.testing.assert_close(up, torch.full((2, 8, 8), 3.0))


def test_box_is_largest_component_above_threshold():
    heatmap = np.zeros((6, 8))
    heatmap[1:3, 1:4] = 1.0  # 6 pixels, rows 1–2, cols 1–3
    heatmap[4, 6] = 0.9  # 1 pixel, above threshold but smaller
    heatmap[5, 0] = 0.1  # below 0.2 · max
    assert cam.box_from_map(heatmap, 0.2) == (1, 1, 3, 2)


def test_box_threshold_is_relative_to_min_shifted_max():
    heatmap = np.full((4, 4), -1.0)
    heatmap[0:2, 2:4] = 1.0  # shifted: 2 on the block, 0 elsewhere
    heatmap[3, 0] = -0.5  # shifted 0.5 ≥ 0.2 · 2, but a separate 1-pixel component
    assert cam.box_from_map(heatmap, 0.2) == (2, 0, 3, 1)
    assert cam.box_from_map(np.ones((3, 5))) == (0, 0, 4, 2)
    with pytest.raises(ValueError, match="threshold"):
        cam.box_from_map(heatmap, 1.5)


def test_iou_by_hand():
    assert cam.iou((0, 0, 1, 1), (1, 1, 2, 2)) == pytest.approx(1 / 7)
    assert cam.iou((0, 0, 3, 3), (0, 0, 3, 3)) == 1.0
    assert cam.iou((0, 0, 1, 1), (5, 5, 6, 6)) == 0.0
    assert cam.iou((0, 0, 3, 1), (2, 0, 5, 1)) == pytest.approx(4 / 12)


def test_localisation_correct_needs_class_and_overlap():
    box, near, far = (0, 0, 3, 3), (0, 0, 3, 2), (2, 2, 5, 5)
    assert cam.localisation_correct(1, 1, near, box)  # IoU 12/16
    assert not cam.localisation_correct(2, 1, near, box)
    assert not cam.localisation_correct(1, 1, far, box)  # IoU 4/28


def test_masks():
    heatmap = np.array([[0.0, 0.1, 1.0], [0.5, 0.19, 0.2]])
    mask = cam.threshold_mask(heatmap, 0.2)
    np.testing.assert_array_equal(mask, [[False, False, True], [True, False, True]])
    assert not cam.threshold_mask(np.ones((2, 2))).any()
    images = torch.ones(1, 2, 2, 3)
    masked = cam.apply_mask(images, mask[None], fill=-1.0)
    assert (masked[0, :, mask] == -1.0).all() and (masked[0, :, ~mask] == 1.0).all()
    assert (images == 1.0).all()
    rolled = cam.shifted_masks(np.stack([mask, mask]), np.random.default_rng(0))
    assert rolled.shape == (2, 2, 3) and (rolled.sum(axis=(1, 2)) == mask.sum()).all()


def test_gap_cnn_logits_are_linear_in_pooled_cam():
    """For a GAP network, the mean of the CAM over positions plus the bias is the logit."""
    torch.manual_seed(0)
    model = GapCNN(4, width=4).eval()
    x = torch.randn(3, 1, 12, 12)
    with torch.no_grad():
        logits = model(x)
        features = model.feature_maps(x)
        assert features.shape == (3, 8, 6, 6)
        for k in range(4):
            maps = cam.class_maps(features, model.classifier.weight, torch.full((3,), k))
            torch.testing.assert_close(maps.mean(dim=(1, 2)) + model.classifier.bias[k],
                                       logits[:, k], atol=1e-5, rtol=1e-5)
