"""Where things live in the repository, and the one list of inputs that produce numbers.

Both the runner's content hash (is an executed chapter stale?) and the provenance dirty flag
(were the numbers made from uncommitted inputs?) read :data:`NUMBER_INPUTS`, so they can never
disagree about what counts as an input.
"""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[3]
CLAIMS_DIR = REPO_ROOT / "data" / "claims"
NOTEBOOKS_DIR = REPO_ROOT / "notebooks"
BOOK_DIR = REPO_ROOT / "book"
RESULTS_DIR = REPO_ROOT / "results"

# Paths (relative to the repository root) whose content changes numbers or verdicts.
NUMBER_INPUTS = ("src", "data/claims", "data/README.md", "pyproject.toml")
