"""Image classification sets from the HuggingFace hub, for the ``paper`` profiles.

One code path for both sources: :func:`load_hub_images` calls ``datasets.load_dataset`` with the
hub id from :data:`HUB_IMAGE_DATASETS`, or, given ``data_files``, with local parquet files in the
hub's own schema (how the tests run it offline, and how a reader with a downloaded copy runs it).

Every hub load is pinned: :data:`PINS_FILE` (``data/hub_pins.json``) records, per hub repository,
the commit to read and the sha256 of each of its parquet files (the hub's own LFS checksums).
:func:`pinned_split_files` downloads exactly those files at that commit and checks each against
its sha256 before ``datasets`` reads it, through the same local-parquet path the tests use. A
repository without a pin is refused (pin it with ``python -m softmax_repro.data.hub pin NAME``,
which needs the network, then review and commit the file).

Schemas (dataset cards of ``uoft-cs/cifar10`` and ``uoft-cs/cifar100``): CIFAR-10 has columns
``img`` (Image, 32×32 RGB) and ``label`` (ClassLabel, 10 names); CIFAR-100 has ``img``,
``fine_label`` (100 classes) and ``coarse_label`` (20 superclasses). Splits: ``train`` (50,000) and
``test`` (10,000).
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from softmax_repro.config import ConfigError, check_choice
from softmax_repro.data.registry import REPO_ROOT, DataIntegrityError, sha256_file

if TYPE_CHECKING:
    import datasets

PINS_FILE = REPO_ROOT / "data" / "hub_pins.json"
"""Pinned hub repositories: ``{repo: {"revision": <40-hex commit>, "files": {path: sha256}}}``."""
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


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
    if data_files is None:  # the hub: only the pinned, checksummed files of the split
        data_files = pinned_split_files(repo, split, cache_dir=cache_dir)
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


def load_pins(path: Path = PINS_FILE) -> dict[str, dict[str, Any]]:
    """The pinned hub repositories of ``path`` (empty when the file does not exist).

    Raises:
        ConfigError: the file is not valid JSON, or an entry lacks a 40-hex commit or a sha256
            per file (the message names the file and the repository).
    """
    if not path.exists():
        return {}
    try:
        pins = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ConfigError(f"{path} is not valid JSON ({error}); restore it with git") from None
    for repo, pin in pins.items():
        files = pin.get("files") if isinstance(pin, dict) else None
        if (not isinstance(files, dict) or not _COMMIT.match(str(pin.get("revision")))
                or not all(_SHA256.match(str(v)) for v in files.values())):
            raise ConfigError(f"{path}: the pin of {repo} needs a 40-hex 'revision' and a sha256 "
                              "per file; re-pin it with python -m softmax_repro.data.hub pin")
    return pins


def _split_of(filename: str) -> str:
    """The split a hub parquet file holds: ``plain_text/train-00000-of-00001.parquet`` → train,
    ``test/0000.parquet`` (the parquet converter's layout) → test."""
    stem = Path(filename).name
    match = re.match(r"^([A-Za-z]+)-\d+(-of-\d+)?\.parquet$", stem)
    if match:
        return match.group(1)
    parent = Path(filename).parent.name
    return parent if re.match(r"^\d+\.parquet$", stem) else ""


def pinned_split_files(
    repo: str,
    split: str,
    *,
    cache_dir: str | Path | None = None,
    subset: str | None = None,
    pins: Mapping[str, Mapping[str, Any]] | None = None,
    download: Callable[..., str] | None = None,
) -> list[Path]:
    """Local copies of ``repo``'s pinned parquet files of ``split``, each checked by sha256.

    Args:
        repo: the hub dataset id.
        split: the split the files hold (from their names: ``train-00000-of-00002.parquet``).
        cache_dir: the HuggingFace cache folder (default: HuggingFace's).
        subset: the dataset's configuration (its files' top folder, e.g. ``wikitext-2-v1``).
        pins: the pins (default: :func:`load_pins`).
        download: ``huggingface_hub.hf_hub_download`` (tests pass a local stand-in).

    Raises:
        ConfigError: ``repo`` has no pin, or its pin has no file for ``split``.
        DataIntegrityError: a downloaded file's sha256 differs from its pin.
    """
    pins = load_pins() if pins is None else pins
    if repo not in pins:
        raise ConfigError(
            f"{repo} has no pinned revision and checksums in {PINS_FILE}: hub data is read only "
            f"at a pinned commit, each file checked by sha256. Pin it (needs the network) with "
            f"`python -m softmax_repro.data.hub pin {repo}`, review and commit the file; or give "
            "local parquet files in the hub's schema (data_files=...)"
        )
    pin = pins[repo]
    names = sorted(f for f in pin["files"] if _split_of(f) == split
                   and (subset is None or f.split("/")[0] == subset))
    if not names:
        raise ConfigError(f"the pin of {repo} in {PINS_FILE} has no parquet file of split "
                          f"{split!r} (subset {subset}); its files: {sorted(pin['files'])}")
    if download is None:
        from huggingface_hub import hf_hub_download as download
    local = []
    for name in names:
        path = Path(download(repo, name, repo_type="dataset", revision=pin["revision"],
                             cache_dir=None if cache_dir is None else str(cache_dir)))
        actual = sha256_file(path)
        if actual != pin["files"][name]:
            raise DataIntegrityError(
                f"{path} ({repo}@{pin['revision'][:12]}:{name}) has sha256 {actual}, but "
                f"{PINS_FILE.name} pins {pin['files'][name]}; delete it from the HuggingFace "
                "cache and re-run, or re-pin the repository if it changed on purpose"
            )
        local.append(path)
    return local


def pin_repository(repo: str, path: Path = PINS_FILE, api: Any = None) -> dict[str, Any]:
    """Record ``repo``'s current commit and the sha256 of its parquet files in ``path``.

    The checksums are the hub's own (LFS sha256 of each file); nothing is downloaded. Needs the
    network. Review the change and commit it: from then on, loads read exactly these files.
    """
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi()
    info = api.dataset_info(repo, files_metadata=True)
    files = {s.rfilename: s.lfs.sha256 for s in info.siblings
             if s.rfilename.endswith(".parquet") and getattr(s, "lfs", None)}
    if not files:
        raise ConfigError(f"{repo} has no parquet files at {info.sha}; it cannot be pinned")
    pins = load_pins(path)
    pins[repo] = {"revision": info.sha, "files": dict(sorted(files.items()))}
    path.write_text(json.dumps(dict(sorted(pins.items())), indent=1) + "\n")
    return pins[repo]


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m softmax_repro.data.hub pin NAME_OR_REPO``: pin a hub repository."""
    from softmax_repro.data.hub_localisation import HUB_LOCALISATION_DATASETS

    argv = list(sys.argv[1:] if argv is None else argv)
    known = {**HUB_IMAGE_DATASETS, **HUB_LOCALISATION_DATASETS}
    if len(argv) != 2 or argv[0] != "pin":
        print(f"usage: python -m softmax_repro.data.hub pin NAME (one of {sorted(known)}, or a "
              "hub dataset id)", file=sys.stderr)
        return 2
    repo = known[argv[1]].repo if argv[1] in known else argv[1]
    pin = pin_repository(repo)
    print(f"pinned {repo} at {pin['revision']} ({len(pin['files'])} files) in {PINS_FILE}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
