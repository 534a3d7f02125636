"""Where cached data lives and how it is checked.

Every file the library caches or fetches is verified by sha256 before use. A file listed in
:data:`REGISTRY` (fetched from a package registry) must match the recorded checksum; a file the
library generates itself (e.g. MNIST-1D arrays) carries a ``.sha256`` sidecar written at creation.
A mismatch raises :class:`DataIntegrityError` naming the file and the command that rebuilds it —
never a silent re-download.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path

from softmax_repro.config import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[3]  # data/ may not import the pipeline
CACHE_ENV = "SOFTMAX_REPRO_CACHE"


class DataIntegrityError(RuntimeError):
    """A cached data file is missing, truncated or altered."""


@dataclasses.dataclass(frozen=True)
class DataSource:
    """A file fetched from outside the repository.

    Attributes:
        name: registry key.
        filename: file name inside the cache folder.
        sha256: expected checksum of the file.
        rebuild: the shell command that (re)creates the file.
        source: where it comes from.
        licence: its licence, as declared by the source.
    """

    name: str
    filename: str
    sha256: str
    rebuild: str
    source: str
    licence: str


REGISTRY: dict[str, DataSource] = {}
"""Fetched files by name; chapter data modules add their sources here."""


def check_cache_env() -> None:
    """Raise when ``$SOFTMAX_REPRO_CACHE`` is set but empty or blank (which would otherwise put
    the cache into whatever folder the process runs in).

    Raises:
        ConfigError: says to unset the variable or give it a folder.
    """
    value = os.environ.get(CACHE_ENV)
    if value is not None and not value.strip():
        raise ConfigError(
            f"{CACHE_ENV}={value!r} is empty; unset it (the cache is then data/cache) or give it "
            "a folder, e.g. export SOFTMAX_REPRO_CACHE=$HOME/.cache/softmax-repro"
        )


def cache_dir() -> Path:
    """The cache folder: ``$SOFTMAX_REPRO_CACHE`` or ``data/cache`` in the repository.

    Raises:
        ConfigError: ``$SOFTMAX_REPRO_CACHE`` is set but empty (:func:`check_cache_env`).
    """
    check_cache_env()
    path = Path(os.environ.get(CACHE_ENV) or REPO_ROOT / "data" / "cache")
    path.mkdir(parents=True, exist_ok=True)
    return path


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_registered(name: str, path: str | Path) -> Path:
    """Check ``path`` against the registry entry ``name``; return the path.

    Raises:
        KeyError: ``name`` is not registered.
        DataIntegrityError: the file is missing or its checksum differs.
    """
    source = REGISTRY[name]
    path = Path(path)
    if not path.exists():
        raise DataIntegrityError(f"{path} is missing; rebuild it with: {source.rebuild}")
    actual = sha256_file(path)
    if actual != source.sha256:
        raise DataIntegrityError(
            f"{path} has sha256 {actual}, expected {source.sha256} (truncated or altered); "
            f"delete it and rebuild it with: {source.rebuild}"
        )
    return path


def write_sidecar(path: str | Path) -> None:
    """Record ``path``'s sha256 in ``path.sha256`` (for files the library generates)."""
    path = Path(path)
    Path(f"{path}.sha256").write_text(sha256_file(path) + "\n")


def verify_sidecar(path: str | Path, rebuild: str) -> Path:
    """Check a generated file against its ``.sha256`` sidecar; return the path.

    Raises:
        DataIntegrityError: the sidecar is missing or the checksum differs.
    """
    path = Path(path)
    sidecar = Path(f"{path}.sha256")
    if not sidecar.exists():
        raise DataIntegrityError(
            f"{path} has no checksum file {sidecar.name}; delete it and rebuild it with: {rebuild}"
        )
    expected = sidecar.read_text().strip()
    actual = sha256_file(path)
    if actual != expected:
        raise DataIntegrityError(
            f"{path} has sha256 {actual}, expected {expected} (truncated or "
            f"altered); delete it and rebuild it with: {rebuild}"
        )
    return path
