"""Fixtures shared by several test files."""

from __future__ import annotations

import pytest


@pytest.fixture
def hub_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """No network for the HuggingFace libraries: the variables, and the flags ``datasets`` and
    ``huggingface_hub`` read from them at import time (setting only the variables after the
    import would change nothing)."""
    datasets = pytest.importorskip("datasets")
    huggingface_hub = pytest.importorskip("huggingface_hub")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
