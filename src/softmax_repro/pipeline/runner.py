"""The papermill driver Make calls: execute stale chapters, then generate the ledger and status.

Usage (see ``make help``)::

    python -m softmax_repro.pipeline.runner execute [--profile cpu] [--name NAME] [--device auto]
    python -m softmax_repro.pipeline.runner report  [--profile cpu]

A chapter is stale when the sha256 of (its notebook source, the profile and device, every file
under ``src/``, ``data/claims/`` and ``data/README.md``) differs from the hash stored in the
executed notebook's metadata. Execution goes to a temporary file that is moved into place only on
success, together with the chapter's results file; a failed run leaves its notebook (with the
traceback) in ``failed/<profile>/`` and the previous good outputs untouched.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import nbformat

from softmax_repro.config import PROFILE_NAMES, ConfigError, check_choice, check_device
from softmax_repro.engine import distributed
from softmax_repro.engine.training import CHECKPOINT_ENV
from softmax_repro.pipeline.paths import NUMBER_INPUTS, REPO_ROOT

KERNEL_NAME = "softmax-repro"
METADATA_KEY = "softmax_repro"


def chapter_names(notebooks_dir: Path = REPO_ROOT / "notebooks") -> list[str]:
    """Names (file stems) of the source notebooks, in order."""
    return sorted(p.stem for p in notebooks_dir.glob("[0-9]*.ipynb"))


def content_hash(notebook: Path, profile: str, device: str, root: Path = REPO_ROOT) -> str:
    """sha256 over the notebook, profile, device and every file of :data:`paths.NUMBER_INPUTS`."""
    digest = hashlib.sha256()
    digest.update(f"profile={profile}\ndevice={device}\n".encode())
    files = [notebook]
    for name in NUMBER_INPUTS:
        path = root / name
        if path.is_dir():
            files.extend(p for p in sorted(path.rglob("*")) if p.is_file() and p.suffix != ".pyc")
        else:
            files.append(path)
    for path in files:
        if path.exists():
            digest.update(
                str(path.relative_to(root) if path.is_relative_to(root) else path.name).encode()
            )
            digest.update(path.read_bytes())
    return digest.hexdigest()


def stored_hash(executed: Path) -> str | None:
    """The hash recorded in an executed notebook (``None`` if absent or unreadable)."""
    if not executed.exists():
        return None
    try:
        meta = json.loads(executed.read_text())["metadata"]
        return meta.get(METADATA_KEY, {}).get("hash")
    except (json.JSONDecodeError, KeyError):
        return None


_CARRIAGE = re.compile(r"[^\n]*\r(?!\n)")


def clean_outputs(nb: nbformat.NotebookNode) -> None:
    """Strip progress-bar redraws (``\\r`` segments) and widget state from executed outputs."""
    nb.metadata.pop("widgets", None)
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            if output.get("output_type") == "stream":
                text = _CARRIAGE.sub("", output["text"])
                output["text"] = "\n".join(line for line in text.split("\n") if line.strip()) + "\n"
            data = output.get("data", {})
            data.pop("application/vnd.jupyter.widget-view+json", None)


def _wait_for_ranks(staging: Path, world: int) -> None:
    """Block until ranks ``1..world-1`` have left their done marker in ``staging``.

    If a rank fails, torchrun stops every rank, so this never waits for a dead one.
    """
    while any(not (staging / f"rank{r}.done").exists() for r in range(1, world)):
        time.sleep(1.0)


def show_final_results_dir(nb: nbformat.NotebookNode, staging: Path, results_dir: Path,
                           root: Path) -> None:
    """Make the injected parameters show where the results land, not the staging folder.

    The notebook wrote into a temporary staging folder; the runner then moved the file to
    ``results_dir/<profile>/``, which is what a reader re-running the chapter should see.
    """
    final = results_dir.relative_to(root) if results_dir.is_relative_to(root) else results_dir
    for cell in nb.cells:
        if "injected-parameters" in cell.metadata.get("tags", []):
            cell.source = cell.source.replace(repr(str(staging)), repr(str(final))).replace(
                f'"{staging}"', f'"{final}"')


def execute_chapter(
    name: str,
    profile: str,
    *,
    device: str = "auto",
    out_dir: Path = REPO_ROOT / "book" / "chapters",
    results_dir: Path = REPO_ROOT / "results",
    force: bool = False,
    root: Path = REPO_ROOT,
) -> bool:
    """Execute one chapter if stale. Returns True if it ran, False if it was up to date.

    Raises:
        ConfigError: unknown chapter, profile or device.
        RuntimeError: the notebook failed (its executed copy is saved under ``failed/``).
    """
    import papermill

    names = chapter_names(root / "notebooks")
    check_choice("NAME", name, names)
    check_choice("PROFILE", profile, PROFILE_NAMES)
    check_device(device)
    source = root / "notebooks" / f"{name}.ipynb"
    target = out_dir / f"{name}.ipynb"
    digest = content_hash(source, profile, device, root)
    if not force and stored_hash(target) == digest:
        print(f"[up to date] {name} ({profile})")
        return False
    out_dir.mkdir(parents=True, exist_ok=True)
    checkpoints = results_dir / ".checkpoints" / profile / digest[:16]
    (results_dir / ".staging").mkdir(parents=True, exist_ok=True)
    rank = distributed.rank()  # $RANK under torchrun (the runner itself never joins the group)
    if distributed.launched_by_torchrun():
        # one staging folder shared by the ranks: rank 0's kernel writes the results file there
        # and the others read it back; each rank executes its own copy of the notebook into it
        staging = results_dir / ".staging" / f"{name}-{os.environ['TORCHELASTIC_RUN_ID']}"
        staging.mkdir(exist_ok=True)
    else:
        staging = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=results_dir / ".staging"))
    tmp_nb = staging / (f"{name}.ipynb" if rank == 0 else f"{name}.rank{rank}.ipynb")
    print(f"[executing] {name} at profile={profile} device={device}", flush=True)
    start = time.perf_counter()
    env_before = os.environ.get(CHECKPOINT_ENV)
    os.environ[CHECKPOINT_ENV] = str(checkpoints)
    try:
        papermill.execute_notebook(
            str(source),
            str(tmp_nb),
            kernel_name=KERNEL_NAME,
            cwd=str(root),
            parameters={"profile": profile, "device": device, "results_dir": str(staging)},
            progress_bar=False,
            log_output=False,
            report_mode=False,
        )
    except BaseException as error:
        failed = root / "failed" / profile / tmp_nb.name
        failed.parent.mkdir(parents=True, exist_ok=True)
        if tmp_nb.exists():
            shutil.move(tmp_nb, failed)
        if rank == 0:
            shutil.rmtree(staging, ignore_errors=True)
        if isinstance(error, KeyboardInterrupt):
            raise
        raise RuntimeError(
            f"{name} failed at profile={profile}; the executed notebook with the "
            f"traceback is {failed}"
        ) from error
    finally:
        if env_before is None:
            os.environ.pop(CHECKPOINT_ENV, None)
        else:
            os.environ[CHECKPOINT_ENV] = env_before
    if rank != 0:  # rank 0 alone publishes, once every rank is done with the staging folder
        tmp_nb.replace(staging / f"rank{rank}.done")
        print(f"[done] {name} on rank {rank}", flush=True)
        return True
    if distributed.launched_by_torchrun():
        _wait_for_ranks(staging, int(os.environ["WORLD_SIZE"]))
    nb = nbformat.read(tmp_nb, as_version=4)
    clean_outputs(nb)
    show_final_results_dir(nb, staging, results_dir, root)
    nb.metadata[METADATA_KEY] = {
        "hash": digest,
        "profile": profile,
        "device": device,
        "wall_s": round(time.perf_counter() - start, 1),
    }
    nbformat.write(nb, tmp_nb)
    produced = staging / profile / f"{name}.json"
    if not produced.exists():
        shutil.rmtree(staging, ignore_errors=True)
        raise RuntimeError(
            f"{name} ran but wrote no results file {produced.name}; "
            f"does the notebook call run(config, results_dir=results_dir)?"
        )
    (results_dir / profile).mkdir(parents=True, exist_ok=True)
    os.replace(produced, results_dir / profile / f"{name}.json")
    os.replace(tmp_nb, target)
    shutil.rmtree(staging, ignore_errors=True)
    shutil.rmtree(checkpoints, ignore_errors=True)
    print(f"[done] {name} in {time.perf_counter() - start:.0f} s -> {target}", flush=True)
    return True


def verify(profile: str, names: Sequence[str], results_dir: Path, tolerance: float) -> int:
    """Re-execute ``names`` at ``profile`` into a scratch folder and compare with ``results_dir``.

    Prints a table of matches and mismatches; returns 0 when every number matches, else 1.
    """
    import pandas as pd

    from softmax_repro.pipeline.verify import verify_chapter

    for name in names:
        check_choice("NAME", name, chapter_names())
    scratch = Path(tempfile.mkdtemp(prefix="verify-"))
    summary = []
    for name in names:
        committed = results_dir / profile / f"{name}.json"
        if not committed.exists():
            summary.append({"chapter": name, "numbers": 0, "mismatches": "no committed results"})
            continue
        execute_chapter(name, profile, out_dir=scratch / "chapters",
                        results_dir=scratch / "results", force=True)
        table = verify_chapter(scratch / "results" / profile / f"{name}.json", committed, profile,
                               tolerance)
        bad = table[~table["match"]]
        if not bad.empty:
            print(f"mismatches in {name}:\n{bad.to_string(index=False)}")
        summary.append({"chapter": name, "numbers": len(table), "mismatches": len(bad),
                        "largest difference": table["difference"].max()})
    shutil.rmtree(scratch, ignore_errors=True)
    frame = pd.DataFrame(summary)
    print(frame.to_string(index=False))
    ok = all(isinstance(m, int) and m == 0 for m in frame["mismatches"])
    print("verify: all numbers match" if ok else "verify: MISMATCH", flush=True)
    return 0 if ok else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m softmax_repro.pipeline.runner",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    ex = sub.add_parser("execute", help="execute stale chapters with papermill")
    ex.add_argument("--profile", default="cpu")
    ex.add_argument("--name", action="append", help="chapter (repeatable; default: all)")
    ex.add_argument("--device", default="auto")
    ex.add_argument("--force", action="store_true", help="execute even if up to date")
    ex.add_argument("--out-dir", type=Path, default=REPO_ROOT / "book" / "chapters")
    ex.add_argument("--results-dir", type=Path, default=REPO_ROOT / "results")
    ver = sub.add_parser("verify", help="re-execute chapters into a scratch folder and compare "
                         "every number with the committed results")
    ver.add_argument("--profile", default="cpu")
    ver.add_argument("--name", action="append", help="chapter (repeatable; default: all)")
    ver.add_argument("--tolerance", type=float, default=0.0,
                     help="largest allowed |fresh − committed| (default 0: bit-identical)")
    ver.add_argument("--results-dir", type=Path, default=REPO_ROOT / "results")
    rep = sub.add_parser("report", help="generate the ledger and status pages")
    rep.add_argument("--profile", default="cpu")
    rep.add_argument("--book-dir", type=Path, default=REPO_ROOT / "book")
    rep.add_argument("--results-dir", type=Path, default=REPO_ROOT / "results")
    args = parser.parse_args(argv)
    try:
        check_choice("PROFILE", args.profile, PROFILE_NAMES)
        if args.command == "report":
            from softmax_repro.pipeline.report import write_report

            for path in write_report(args.profile, args.results_dir, args.book_dir):
                print(f"[wrote] {path}")
            return 0
        if args.command == "verify":
            return verify(args.profile, args.name or chapter_names(), args.results_dir,
                          args.tolerance)
        check_device(args.device)
        names = args.name or chapter_names()
        for name in names:
            check_choice("NAME", name, chapter_names())
        ran = [
            n
            for n in names
            if execute_chapter(
                n,
                args.profile,
                device=args.device,
                out_dir=args.out_dir,
                results_dir=args.results_dir,
                force=args.force,
            )
        ]
        print(f"executed {len(ran)} of {len(names)} chapter(s)")
        return 0
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except RuntimeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
