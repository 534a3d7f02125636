"""Results files: ``<results_dir>/<profile>/<chapter>.json`` with per-run rows and provenance.

A row is a flat dict with at least ``method``, ``seed``, ``metric`` and ``value``, plus setting
columns (``dataset``, ``imbalance``, ...) and optionally ``wall_s``. Provenance records where the
numbers came from: git commit and dirty flag, profile, full config, package versions, device,
CPU/GPU name, start time, wall seconds and seconds per phase.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import platform
import subprocess
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from softmax_repro.config import BaseConfig, ConfigError
from softmax_repro.engine import distributed
from softmax_repro.engine.timing import PhaseTimer
from softmax_repro.pipeline.paths import NUMBER_INPUTS, REPO_ROOT

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


def environment(device: torch.device | str) -> dict[str, Any]:
    """Git state, package versions and hardware of this process."""
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
    status = _git(
        "status", "--porcelain", "--untracked-files=no", "--", "notebooks", *NUMBER_INPUTS
    )
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
        **environment(device),
    }
    payload = {
        "chapter": chapter,
        "profile": config.profile,
        "provenance": provenance,
        "rows": [dict(r) for r in rows],
    }
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
    """Rows (as a DataFrame) and provenance of a results file.

    Args:
        path: the JSON file.
        profile: when given, the file must have been written at this profile.

    Raises:
        ConfigError: the file belongs to another profile.
    """
    payload = json.loads(Path(path).read_text())
    if profile is not None and payload["profile"] != profile:
        raise ConfigError(
            f"results file {path} was written at profile={payload['profile']!r}, "
            f"but profile={profile!r} was asked for"
        )
    return pd.DataFrame.from_records(payload["rows"]), payload["provenance"]


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
