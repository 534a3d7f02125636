"""Results files: ``<results_dir>/<profile>/<chapter>.json`` with per-run rows and provenance.

A row is a flat dict with at least ``method``, ``seed``, ``metric`` and ``value``, plus setting
columns (``dataset``, ``imbalance``, ...) and optionally ``wall_s``. Provenance records where the
numbers came from: git commit and dirty flag, profile, full config, package versions, device,
CPU/GPU name, start time, wall seconds and seconds per phase.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import json
import math
import platform
import subprocess
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from softmax_repro.config import BaseConfig, ConfigError
from softmax_repro.pipeline.paths import REPO_ROOT, number_inputs

if TYPE_CHECKING:  # torch is imported where it is used: reading results must not need it
    import torch

    from softmax_repro.engine.timing import PhaseTimer

REQUIRED_COLUMNS = ("method", "seed", "metric", "value")
TIMING_METRIC_SUFFIXES = ("_s", "_s_inc", "_per_s")
"""Metric names ending so measure time (seconds, per-second rates): real results, but not
reproducible to the bit, so determinism checks and ``make verify`` leave them out."""
PACKAGES = (
    "torch",
    "numpy",
    "pandas",
    "scikit-learn",
    "scipy",
    "mnist1d",
    "datasets",
    "seaborn",
    "papermill",
    "jupyter-book",
)


def _git(*args: str) -> str:
    try:
        return subprocess.run(
            ["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def cpu_name() -> str:
    """The CPU model name from /proc/cpuinfo (or the platform's processor string)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def environment(device: torch.device | str, chapter: str = "") -> dict[str, Any]:
    """Git state, package versions and hardware of this process.

    ``dirty`` is true when any of ``chapter``'s inputs (:func:`paths.number_inputs`, the same list
    the runner's content hash reads) has uncommitted changes.
    """
    import torch

    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    device = torch.device(device)
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    # dirty = uncommitted edits to what produces numbers; outputs (results, executed chapters)
    # rewritten earlier in the same book run do not count
    status = _git("status", "--porcelain", "--", *number_inputs(chapter or "*"))
    return {
        "commit": _git("rev-parse", "HEAD") or None,
        "dirty": bool(status),
        "python": platform.python_version(),
        "packages": versions,
        "device": str(device),
        "cpu": cpu_name(),
        "gpu": gpu,
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
    }


def write_results(
    chapter: str,
    config: BaseConfig,
    rows: Sequence[Mapping[str, Any]],
    *,
    results_dir: str | Path,
    started: dt.datetime,
    wall_s: float,
    device: torch.device | str,
    timings: Mapping[str, float] | None = None,
) -> Path:
    """Write a chapter's rows and provenance atomically; return the path written.

    Under ``torchrun`` only rank 0 writes; the other ranks wait until it has, and get the same path.

    Raises:
        ValueError: a row lacks a required column, or there are no rows.
    """
    if not rows:
        raise ValueError(f"{chapter}: no result rows to write")
    for row in rows:
        missing = [c for c in REQUIRED_COLUMNS if c not in row]
        if missing:
            raise ValueError(f"{chapter}: a result row lacks {missing}: {dict(row)}")
    provenance = {
        "profile": config.profile,
        "config": config.to_dict(),
        "started": started.astimezone(dt.UTC).isoformat(timespec="seconds"),
        "wall_s": round(wall_s, 3),
        "timings_s": dict(timings or {}),
        **environment(device, chapter),
    }
    payload = {
        "chapter": chapter,
        "profile": config.profile,
        "provenance": provenance,
        "rows": [dict(r) for r in rows],
    }
    from softmax_repro.engine import distributed

    path = Path(results_dir) / config.profile / f"{chapter}.json"
    if distributed.is_rank0():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(payload, indent=1, default=float) + "\n")
        tmp.replace(path)
    distributed.barrier()
    return path


def read_results(
    path: str | Path, profile: str | None = None
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Rows (as a DataFrame) and provenance of a results file, checked before use.

    Args:
        path: the JSON file.
        profile: when given, the file must have been written at this profile, and its commit
            must be one of this repository's (see :func:`check_provenance`).

    Raises:
        ConfigError: the file is unreadable or truncated, lacks a field, belongs to another
            profile, was relabelled, names a commit this repository does not have, or holds a row
            whose value is not a finite number. The message names the file (and the row).
    """
    path = Path(path)
    try:
        payload = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"results file {path} does not exist; run the chapter first "
                          "(make chapter NAME=...)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ConfigError(f"results file {path} is not valid JSON ({error}): truncated or edited "
                          "by hand; re-run its chapter (make chapter NAME=...) or restore it "
                          "with git") from None
    check_provenance(payload, path, profile)
    _check_rows(payload["rows"], path)
    return pd.DataFrame.from_records(payload["rows"]), payload["provenance"]


def check_provenance(payload: Any, path: Path, profile: str | None = None) -> None:
    """Reject a results payload whose labels disagree with each other or with ``profile``.

    The profile is recorded three times (top level, provenance, the config) and must agree;
    the chapter must match the file name. With ``profile`` given, a commit this repository does
    not know is rejected too (skipped when git or the history is unavailable, e.g. a shallow
    clone).
    """
    fix = "re-run its chapter (make chapter NAME=...) or restore it with git"
    if not isinstance(payload, dict) or not {"chapter", "profile", "provenance", "rows"} <= set(
            payload):
        raise ConfigError(f"results file {path} lacks chapter/profile/provenance/rows; {fix}")
    provenance = payload["provenance"]
    labels = {"profile": payload["profile"], "provenance.profile": provenance.get("profile"),
              "provenance.config.profile": provenance.get("config", {}).get("profile")}
    if len(set(labels.values())) != 1:
        raise ConfigError(f"results file {path} disagrees with itself about its profile "
                          f"({labels}): relabelled by hand? {fix}")
    if payload["chapter"] != path.stem:
        raise ConfigError(f"results file {path} holds chapter {payload['chapter']!r}, not "
                          f"{path.stem!r}; {fix}")
    if profile is None:
        return
    if payload["profile"] != profile:
        raise ConfigError(
            f"results file {path} was written at profile={payload['profile']!r}, "
            f"but profile={profile!r} was asked for"
        )
    commit = provenance.get("commit")
    if commit and not _commit_known(commit):
        raise ConfigError(f"results file {path} names commit {commit}, which this repository "
                          f"does not have: results from another repository or history; {fix}")


@functools.lru_cache(maxsize=64)
def _commit_known(commit: str) -> bool:
    """Whether ``commit`` is in this repository (true when git or full history is unavailable)."""
    if _git("rev-parse", "--is-shallow-repository") != "false":
        return True  # no git, not a repository, or a shallow clone: nothing to check against
    try:
        done = subprocess.run(["git", "cat-file", "-e", f"{commit}^{{commit}}"], cwd=REPO_ROOT,
                              capture_output=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return True
    return done.returncode == 0


def _check_rows(rows: Any, path: Path) -> None:
    if not isinstance(rows, list):
        raise ConfigError(f"results file {path}: rows must be a list")
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or any(c not in row for c in REQUIRED_COLUMNS):
            raise ConfigError(f"results file {path}, row {i}: lacks one of {REQUIRED_COLUMNS}: "
                              f"{row!r}")
        value = row["value"]
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(
                value):
            raise ConfigError(f"results file {path}, row {i} ({row['method']}, seed "
                              f"{row['seed']}, {row['metric']}): value {value!r} is not a finite "
                              "number; fix the chapter so it never records NaN or infinity")


def now() -> dt.datetime:
    """The current UTC time (the ``started`` stamp of a run)."""
    return dt.datetime.now(dt.UTC)


@dataclasses.dataclass(frozen=True)
class ChapterResult:
    """What a chapter's ``run`` returns: its rows (as written) and their provenance."""

    rows: pd.DataFrame
    provenance: dict[str, Any]


def save_chapter(
    chapter: str,
    config: BaseConfig,
    rows: Sequence[Mapping[str, Any]],
    *,
    results_dir: str | Path,
    started: dt.datetime,
    timer: PhaseTimer,
    device: torch.device | str,
) -> ChapterResult:
    """Write a chapter's results (wall time = the sum of ``timer``'s phases) and read them back."""
    path = write_results(chapter, config, rows, results_dir=results_dir, started=started,
                         wall_s=sum(timer.seconds.values()), device=device,
                         timings=timer.as_dict())
    frame, provenance = read_results(path)
    return ChapterResult(frame, provenance)


def provenance_table(provenance: Mapping[str, Any]) -> pd.DataFrame:
    """Runtime and environment of a run as a two-column table for a chapter's last section."""
    timings = ", ".join(f"{k} {v:.0f} s" for k, v in provenance.get("timings_s", {}).items())
    packages = provenance.get("packages", {})
    items = {
        "started (UTC)": provenance.get("started"),
        "wall time (s)": round(provenance.get("wall_s", 0.0)),
        "time by phase": timings or "—",
        "profile": provenance.get("profile"),
        "seeds": ", ".join(map(str, provenance.get("config", {}).get("seeds", []))),
        "device": provenance.get("device"),
        "CPU / GPU": provenance.get("gpu") or provenance.get("cpu"),
        "torch threads": provenance.get("config", {}).get("threads")
        or provenance.get("torch_threads"),
        "commit": f"{provenance.get('commit')}{' (dirty)' if provenance.get('dirty') else ''}",
        "Python / torch": f"{provenance.get('python')} / {packages.get('torch')}",
    }
    return pd.DataFrame({"item": list(items), "value": [str(v) for v in items.values()]})


def is_timing_metric(metric: str) -> bool:
    """Whether ``metric`` measures wall time (see :data:`TIMING_METRIC_SUFFIXES`)."""
    return metric.endswith(TIMING_METRIC_SUFFIXES)


def without_timings(rows: pd.DataFrame) -> pd.DataFrame:
    """``rows`` minus timing metrics and the ``wall_s`` column, index reset."""
    kept = rows[~rows["metric"].map(is_timing_metric)]
    return kept.drop(columns=["wall_s"], errors="ignore").reset_index(drop=True)
