"""Where things live in the repository, and the one list of inputs that produce numbers.

Both the runner's content hash (is an executed chapter stale?) and the provenance dirty flag
(were the numbers made from uncommitted inputs?) read :func:`number_inputs`, so they can never
disagree about what counts as an input.
"""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[3]
CLAIMS_DIR = REPO_ROOT / "data" / "claims"
NOTEBOOKS_DIR = REPO_ROOT / "notebooks"
BOOK_DIR = REPO_ROOT / "book"
RESULTS_DIR = REPO_ROOT / "results"

# Paths (relative to the repository root) whose content changes numbers or verdicts, for every
# chapter; :func:`number_inputs` adds the chapter's own source notebook.
NUMBER_INPUTS = ("src", "data/claims", "data/README.md", "pyproject.toml")
# Generated files inside those folders (all ignored by git): never inputs.
GENERATED_PARTS = ("__pycache__", ".ipynb_checkpoints")
GENERATED_SUFFIXES = (".pyc", ".egg-info")


def number_inputs(chapter: str) -> tuple[str, ...]:
    """The inputs of ``chapter``'s numbers, relative to the repository root: its source notebook
    and :data:`NUMBER_INPUTS`. The content hash and the dirty flag both read this list."""
    return (f"notebooks/{chapter}.ipynb", *NUMBER_INPUTS)


def _generated(path: Path) -> bool:
    return any(part in GENERATED_PARTS or part.endswith(GENERATED_SUFFIXES)
               for part in path.parts)


def number_input_files(chapter: str, root: Path = REPO_ROOT) -> list[Path]:
    """Every existing file of :func:`number_inputs` under ``root``, in a stable order (folders
    expanded, generated files such as ``__pycache__`` and ``*.egg-info`` left out)."""
    files: list[Path] = []
    for name in number_inputs(chapter):
        path = root / name
        if path.is_dir():
            files.extend(p for p in sorted(path.rglob("*"))
                         if p.is_file() and not _generated(p.relative_to(root)))
        elif path.is_file():
            files.append(path)
    return files
