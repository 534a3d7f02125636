"""CUB-200-2011 localisation loader and chapter 04's ``cub200`` path, on tiny local parquet files
in the hub's schema (``image``, ``label`` with 200 classes, ``bbox`` = x_min, y_min, x_max, y_max),
read through the same ``datasets.load_dataset`` code path, offline."""

from __future__ import annotations

from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from softmax_repro.config import ConfigError
from softmax_repro.data.hub_localisation import (
    HUB_LOCALISATION_DATASETS,
    load_hub_localisation,
    local_split_files,
    resize_box,
)
from softmax_repro.experiments import ch04_softmax_mutual_information as chapter
from softmax_repro.pipeline import claims

NAMES = [f"{i + 1:03d}.Bird_{i + 1}" for i in range(200)]

# (mode, width, height, fill, label, bbox): constant images, so every resized pixel is `fill`.
EXAMPLES = [
    ("RGB", 64, 32, (200, 10, 50), 0, [16.0, 8.0, 48.0, 24.0]),
    ("L", 40, 30, 77, 5, [0.0, 0.0, 40.0, 30.0]),
    ("RGB", 17, 50, (1, 2, 3), 199, [3.0, 10.0, 9.0, 35.5]),
    ("RGB", 32, 32, (0, 255, 128), 17, [4.0, 4.0, 4.0, 4.0]),
    ("RGBA", 50, 20, (9, 99, 199, 255), 42, [0.5, 2.0, 50.5, 19.0]),
    ("RGB", 100, 75, (60, 70, 80), 100, [19.0, 18.0, 83.0, 62.0]),
]
# Inclusive boxes at S = 32 by hand: x0 = floor(x_min·S/W), x1 = ceil(x_max·S/W) − 1, clipped.
EXPECTED_BOXES_32 = [
    (8, 8, 23, 23),      # sx = 0.5, sy = 1
    (0, 0, 31, 31),      # the whole image
    (5, 6, 16, 22),      # 3·32/17 = 5.6; 9·32/17 = 16.9 -> 17 − 1; 10·0.64 = 6.4; 35.5·0.64 = 22.7
    (4, 4, 4, 4),        # a zero-size box keeps one pixel
    (0, 3, 31, 30),      # x_max 50.5 > W = 50 is within the tolerance: clipped to 31
    (6, 7, 26, 26),      # 19·0.32 = 6.08; 83·0.32 = 26.56 -> 26; 18·32/75 = 7.68; 62·32/75 = 26.45
]


@pytest.fixture(autouse=True)
def _offline(hub_offline: None) -> None:
    """Every test here runs with the HuggingFace libraries offline (``conftest.hub_offline``)."""


def _image(mode: str, width: int, height: int, fill) -> Image.Image:
    return Image.new(mode, (width, height), fill)


def _write_cub(path: Path, examples, *, with_bbox: bool = True) -> None:
    """A parquet file in the hub schema of ``bentrevett/caltech-ucsd-birds-200-2011``."""
    columns = {"image": datasets.Image(), "label": datasets.ClassLabel(names=NAMES)}
    data = {"image": [_image(*e[:4]) for e in examples], "label": [e[4] for e in examples]}
    if with_bbox:
        columns["bbox"] = datasets.Sequence(datasets.Value("float32"))
        data["bbox"] = [e[5] for e in examples]
    path.parent.mkdir(parents=True, exist_ok=True)
    datasets.Dataset.from_dict(data, features=datasets.Features(columns)).to_parquet(str(path))


def _random_examples(count: int, seed: int) -> list:
    """``count`` solid-colour RGB images of random sizes, labels 0..2 and random valid boxes."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        width, height = (int(v) for v in rng.integers(24, 60, size=2))
        x0, y0 = float(rng.integers(0, width // 2)), float(rng.integers(0, height // 2))
        box = [x0, y0, x0 + width / 3, y0 + height / 3]
        colour = tuple(int(v) for v in rng.integers(0, 256, size=3))
        out.append(("RGB", width, height, colour, i % 3, box))
    return out


def test_registry_names_the_hub_schema() -> None:
    spec = HUB_LOCALISATION_DATASETS["cub200"]
    assert spec.repo == "bentrevett/caltech-ucsd-birds-200-2011"
    assert (spec.image_column, spec.label_column, spec.box_column) == ("image", "label", "bbox")
    assert spec.num_classes == 200 and spec.splits == ("train", "test")
    assert "tiny-imagenet" not in HUB_LOCALISATION_DATASETS  # no boxes on the hub


def test_load_resizes_converts_and_scales_boxes(tmp_path: Path) -> None:
    _write_cub(tmp_path / "train.parquet", EXAMPLES)
    data = load_hub_localisation("cub200", "train", image_size=32,
                                 data_files=tmp_path / "train.parquet",
                                 cache_dir=tmp_path / "cache")
    assert data.images.shape == (6, 3, 32, 32) and data.images.dtype == torch.float32
    assert data.labels.dtype == torch.int64 and data.boxes.dtype == torch.int64
    assert data.labels.tolist() == [0, 5, 199, 17, 42, 100]
    assert [tuple(b) for b in data.boxes.tolist()] == EXPECTED_BOXES_32
    assert len(data) == 6
    for image, (mode, *_, fill, _, _) in zip(data.images, EXAMPLES, strict=True):
        rgb = (fill,) * 3 if mode == "L" else fill[:3]  # grayscale -> three equal channels
        expected = torch.tensor(rgb, dtype=torch.float32)[:, None, None] / 255.0
        assert torch.equal(image, expected.expand(3, 32, 32))


def test_pixels_match_a_bilinear_resize_in_channel_order(tmp_path: Path) -> None:
    pixels = np.random.default_rng(0).integers(0, 256, size=(30, 45, 3), dtype=np.uint8)
    table = datasets.Dataset.from_dict(
        {"image": [Image.fromarray(pixels)], "label": [3], "bbox": [[1.0, 2.0, 40.0, 29.0]]},
        features=datasets.Features({"image": datasets.Image(),
                                    "label": datasets.ClassLabel(names=NAMES),
                                    "bbox": datasets.Sequence(datasets.Value("float32"))}))
    table.to_parquet(str(tmp_path / "test.parquet"))
    data = load_hub_localisation("cub200", "test", image_size=16,
                                 data_files=[tmp_path / "test.parquet"],
                                 cache_dir=tmp_path / "cache")
    resized = np.asarray(Image.fromarray(pixels).resize((16, 16), Image.Resampling.BILINEAR))
    expected = torch.from_numpy(resized.copy()).permute(2, 0, 1).float() / 255.0
    assert torch.equal(data.images[0], expected)
    assert data.images[0, 0, 0, 0] != data.images[0, 1, 0, 0]  # channels are not mixed up


def test_resize_box_by_hand() -> None:
    # the dataset card's example: a 500×375 image with bbox [19, 18, 483, 312], resized to 224
    assert resize_box([19, 18, 483, 312], (500, 375), 224) == (8, 10, 216, 186)
    assert resize_box([0, 0, 500, 375], (500, 375), 224) == (0, 0, 223, 223)
    assert resize_box([-0.5, 0, 10, 10], (10, 10), 5) == (0, 0, 4, 4)  # clipped


@pytest.mark.parametrize(
    ("box", "message"),
    [
        ([5, 1, 4, 3], "x_max < x_min"),
        ([1, 5, 4, 3], "y_max < y_min"),
        ([0, 0, 12, 5], "outside the 10×10 image"),
        ([-2, 0, 5, 5], "outside"),
        ([1, 2, 3], "expected 4 finite numbers"),
        ([1, 2, float("nan"), 4], "expected 4 finite numbers"),
        (None, "expected 4 finite numbers"),
    ],
)
def test_bad_boxes_raise(box, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        resize_box(box, (10, 10), 8)


def test_bad_box_in_a_file_names_the_column_and_row(tmp_path: Path) -> None:
    bad = [EXAMPLES[0], ("RGB", 20, 20, (1, 1, 1), 0, [15.0, 2.0, 10.0, 8.0])]
    _write_cub(tmp_path / "bad.parquet", bad)
    with pytest.raises(ValueError, match=r"column 'bbox', row 1.*x_max < x_min"):
        load_hub_localisation("cub200", "train", image_size=8, data_files=tmp_path / "bad.parquet",
                              cache_dir=tmp_path / "cache")


def test_missing_box_column_is_named(tmp_path: Path) -> None:
    _write_cub(tmp_path / "nobox.parquet", EXAMPLES[:2], with_bbox=False)
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['bbox'\]"):
        load_hub_localisation("cub200", "train", image_size=8,
                              data_files=tmp_path / "nobox.parquet", cache_dir=tmp_path / "cache")


def test_out_of_range_label_is_an_error(tmp_path: Path) -> None:
    features = datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64"),
                                  "bbox": datasets.Sequence(datasets.Value("float32"))})
    datasets.Dataset.from_dict(
        {"image": [_image("RGB", 8, 8, (0, 0, 0))], "label": [200], "bbox": [[0, 0, 8, 8]]},
        features=features).to_parquet(str(tmp_path / "label.parquet"))
    with pytest.raises(ValueError, match=r"labels must lie in 0\.\.199"):
        load_hub_localisation("cub200", "train", image_size=8,
                              data_files=tmp_path / "label.parquet", cache_dir=tmp_path / "cache")


def test_bad_name_split_or_size_fails_before_loading(tmp_path: Path) -> None:
    missing = tmp_path / "none.parquet"
    with pytest.raises(ConfigError, match=r"dataset='tiny-imagenet'.*'cub200'"):
        load_hub_localisation("tiny-imagenet", "train", image_size=32, data_files=missing)
    with pytest.raises(ConfigError, match=r"split='valid'.*'train', 'test'"):
        load_hub_localisation("cub200", "valid", image_size=32, data_files=missing)
    with pytest.raises(ConfigError, match="image_size=1"):
        load_hub_localisation("cub200", "train", image_size=1, data_files=missing)


def test_without_data_files_only_a_pinned_hub_revision_is_read(tmp_path: Path) -> None:
    # no pin recorded in data/hub_pins.json: refused before any download (tests/test_reliability
    # covers a pinned load and a checksum mismatch)
    with pytest.raises(ConfigError, match=r"bentrevett/caltech-ucsd-birds-200-2011 has no pinned"):
        load_hub_localisation("cub200", "train", image_size=8, cache_dir=tmp_path / "cache")


def test_local_split_files_finds_the_hub_layout(tmp_path: Path) -> None:
    for name in ("train-00000-of-00002", "train-00001-of-00002", "test-00000-of-00001"):
        (tmp_path / "data").mkdir(exist_ok=True)
        (tmp_path / "data" / f"{name}.parquet").write_bytes(b"")
    (tmp_path / "data" / "trainer-notes.parquet").write_bytes(b"")  # not a train shard
    names = [p.name for p in local_split_files(tmp_path, "train")]
    assert names == ["train-00000-of-00002.parquet", "train-00001-of-00002.parquet"]
    assert [p.name for p in local_split_files(str(tmp_path / "data" / "{split}-*.parquet"),
                                              "test")] == ["test-00000-of-00001.parquet"]
    (tmp_path / "conv" / "test").mkdir(parents=True)
    (tmp_path / "conv" / "test" / "0000.parquet").write_bytes(b"")  # the parquet-converter layout
    assert local_split_files(tmp_path / "conv", "test") == [tmp_path / "conv" / "test" /
                                                            "0000.parquet"]
    with pytest.raises(FileNotFoundError, match="split 'valid'"):
        local_split_files(tmp_path, "valid")
    with pytest.raises(ConfigError, match="loc_data_files="):
        local_split_files(tmp_path / "data" / "*.parquet", "train")


def test_chapter_config_names_loc_dataset_and_paper_uses_cub() -> None:
    with pytest.raises(ConfigError, match=r"loc_dataset='imagenet'.*'digits', 'cub200'"):
        chapter.make_config("smoke", overrides={"loc_dataset": "imagenet"})
    with pytest.raises(ConfigError, match="loc_image_size"):
        chapter.make_config("smoke", overrides={"loc_image_size": 4})
    with pytest.raises(ConfigError, match="loc_data_files"):
        chapter.make_config("smoke", overrides={"loc_data_files": " "})
    paper = chapter.make_config("paper")
    assert (paper.loc_dataset, paper.loc_image_size, paper.loc_data_files) == ("cub200", 224, None)
    assert chapter.make_config("cpu").loc_dataset == chapter.make_config("smoke").loc_dataset == (
        "digits")


def _cub_copy(root: Path) -> Path:
    """A tiny local copy in the hub's layout: ``data/{train,test}-0000k-of-0000n.parquet``."""
    train = _random_examples(18, seed=1)
    _write_cub(root / "data" / "train-00000-of-00002.parquet", train[:9])
    _write_cub(root / "data" / "train-00001-of-00002.parquet", train[9:])
    _write_cub(root / "data" / "test-00000-of-00001.parquet", _random_examples(10, seed=2))
    return root


def _cub_config(root: Path, **extra):
    overrides = {"loc_dataset": "cub200", "loc_data_files": str(root), "loc_image_size": 32,
                 "cnn_epochs": 1, "cnn_width": 4, "cnn_batch_size": 8, "dims": [1],
                 "n_per_class": 40, "test_per_class": 20, "sample_sizes": [], "bound_methods": [],
                 "epochs": 1, "batch_size": 100, **extra}
    return chapter.make_config("smoke", seeds=[0, 1], overrides=overrides)


def test_chapter_runs_cub200_end_to_end(tmp_path: Path) -> None:
    config = _cub_config(_cub_copy(tmp_path / "cub"))
    model, test = chapter.train_localiser(config, 0, torch.device("cpu"))
    assert model.body[0].in_channels == 3 and model.classifier.out_features == 200
    assert test.images.shape == (10, 3, 32, 32)
    result = chapter.run(config, results_dir=str(tmp_path / "results"))
    local = result.rows[result.rows["part"] == "localisation"]
    assert set(local["dataset"]) == {"cub200"}
    assert set(local["method"]) == {"cnn", "cam", "infocam", "info_mask", "random_mask"}
    assert sorted(set(local["seed"])) == [0, 1]
    assert local["value"].notna().all() and len(local) == 2 * (1 + 3 + 3 + 3 + 3)
    ious = local[local["metric"] == "mean_iou"]["value"]
    assert ious.between(0, 1).all()
    assert result.rows[result.rows["part"] == "synthetic"]["dataset"].isna().all()
    verdicts = {v.claim.id: v.verdict
                for v in claims.chapter_verdicts(chapter.CHAPTER, result.rows)}
    assert verdicts["qin2019rethinking-infocam-beats-cam"] == "no results"  # digits rows only
    examples = chapter.localisation_examples(config, seed=0, count=2)
    assert examples["images"].shape == examples["masked"].shape == (2, 32, 32, 3)
    assert examples["cam"].shape == (2, 32, 32)


def test_scores_do_not_depend_on_the_chunk_size(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    config = _cub_config(_cub_copy(tmp_path / "cub"))
    model, test = chapter.train_localiser(config, 0, torch.device("cpu"))
    whole = chapter.localisation_scores(model, test, config, seed=3)
    monkeypatch.setattr(chapter, "SCORE_CHUNK_PIXELS", 3 * 32 * 32)  # chunks of 3, 3, 3, 1
    chunked = chapter.localisation_scores(model, test, config, seed=3)
    assert whole.keys() == chunked.keys()
    for method, values in whole.items():
        assert chunked[method] == pytest.approx(values, abs=1e-6), method
