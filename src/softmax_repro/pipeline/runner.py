"""The papermill driver Make calls: execute stale chapters, then generate the ledger and status.

Usage (see ``make help``)::

    python -m softmax_repro.pipeline.runner execute [--profile cpu] [--name NAME] [--device auto]
                                                    [--nproc N]
    python -m softmax_repro.pipeline.runner verify  [--profile cpu] [--name NAME] [--tolerance 0]
    python -m softmax_repro.pipeline.runner report  [--profile cpu]

A chapter is stale when the sha256 of (its notebook source, the profile and device, and every
file of :func:`paths.number_inputs`) differs from the hash stored in the executed notebook's
metadata, or when the executed notebook or its results file no longer match the sha256 recorded
at publishing (edited by hand, or a publish cut short). Every input is checked before any work.
Execution goes to a staging folder next to the results; publishing copies the notebook next to
its target, replaces the results file, then the notebook, so a kill at any point leaves either
the previous pair or a pair that reads as stale. A failed run leaves its notebook (with the
traceback) in ``failed/<profile>/`` and the previous good outputs untouched.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
import resource
import shlex
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import nbformat

from softmax_repro.config import PROFILE_NAMES, ConfigError, check_choice, check_device
from softmax_repro.data import registry
from softmax_repro.pipeline.paths import REPO_ROOT, number_input_files

KERNEL_NAME = "softmax-repro"
"""The kernel papermill executes with (registered by ``make setup``)."""
PUBLISHED_KERNELSPEC = {"name": "python3", "display_name": "Python 3", "language": "python"}
"""The kernelspec an executed notebook is published with, so it opens on a stock Jupyter."""
METADATA_KEY = "softmax_repro"
CHECKPOINT_ENV = "SOFTMAX_REPRO_CHECKPOINTS"  # = engine.training.CHECKPOINT_ENV (no torch here)
MIN_FILE_SIZE_LIMIT = 256 * 2**20
"""The smallest file-size limit (``ulimit -f``) a chapter runs under: executed notebooks, results
and checkpoints stay well below it."""
NAME_PATTERN = re.compile(r"^[0-9]{2}_[a-z0-9_]+$")


def chapter_names(notebooks_dir: Path = REPO_ROOT / "notebooks") -> list[str]:
    """Names (file stems) of the source notebooks, in order."""
    return sorted(p.stem for p in notebooks_dir.glob("[0-9]*.ipynb"))


# --- hashing: inputs, published outputs ----------------------------------------------------------


def content_hash(notebook: Path, profile: str, device: str, root: Path = REPO_ROOT) -> str:
    """sha256 over the profile, device and every file of :func:`paths.number_inputs`."""
    digest = hashlib.sha256()
    digest.update(f"profile={profile}\ndevice={device}\n".encode())
    files = number_input_files(notebook.stem, root)
    if notebook not in files:  # a notebook outside ``root/notebooks`` (tests)
        files.insert(0, notebook)
    for path in files:
        digest.update(
            str(path.relative_to(root) if path.is_relative_to(root) else path.name).encode()
        )
        digest.update(path.read_bytes())
    return digest.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def cells_hash(cells: list) -> str:
    """sha256 of a notebook's cells (sources and outputs) as stored on disk."""
    return sha256_bytes(json.dumps(cells, sort_keys=True).encode())


def stored_metadata(executed: Path) -> dict:
    """The runner's metadata of an executed notebook (empty if absent or unreadable)."""
    try:
        return json.loads(executed.read_text())["metadata"].get(METADATA_KEY, {})
    except (OSError, ValueError, KeyError, AttributeError):
        return {}


def stored_hash(executed: Path) -> str | None:
    """The input hash recorded in an executed notebook (``None`` if absent or unreadable)."""
    return stored_metadata(executed).get("hash")


def staleness(executed: Path, results: Path, digest: str) -> str | None:
    """Why ``executed`` (with its ``results``) must be re-run, or ``None`` when up to date.

    Up to date means: the inputs hash to ``digest``, the notebook's cells are those published
    (not edited since) and the results file is the one published with it.
    """
    if not executed.exists():
        return "not executed yet"
    meta = stored_metadata(executed)
    if meta.get("hash") != digest:
        return "inputs changed"
    try:
        cells = json.loads(executed.read_text())["cells"]
        results_bytes = results.read_bytes()
    except (OSError, ValueError, KeyError):
        return "executed notebook or results file unreadable or missing"
    if meta.get("cells_sha256") != cells_hash(cells):
        return "executed notebook edited since it was published"
    if meta.get("results_sha256") != sha256_bytes(results_bytes):
        return f"results file {results} does not match the executed notebook"
    return None


# --- checks before any work ----------------------------------------------------------------------


def check_name(name: object, root: Path = REPO_ROOT) -> None:
    """Raise unless ``name`` is a chapter (a notebook under ``root/notebooks``)."""
    names = chapter_names(root / "notebooks")
    if name not in names:
        raise ConfigError(f"NAME={name!r} is not a chapter; choose one of: {', '.join(names)} "
                          "(e.g. make chapter NAME=01_balanced_softmax)")


def check_device_available(device: str) -> None:
    """Raise unless ``device`` is valid and present on this machine (checked in the terminal,
    before the notebook starts)."""
    check_device(device)
    if not device.startswith("cuda"):
        return
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    index = int(device.split(":")[1]) if ":" in device else 0
    if index >= count:
        raise ConfigError(f"device={device!r} is not available: this machine has {count} CUDA "
                          "device(s); use DEVICE=cpu or DEVICE=auto")


def check_file_size_limit(minimum: int = MIN_FILE_SIZE_LIMIT) -> None:
    """Raise when ``ulimit -f`` would cut a notebook or results file short mid-write."""
    soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    if soft != resource.RLIM_INFINITY and soft < minimum:
        raise ConfigError(f"the file-size limit (ulimit -f) is {soft} bytes, below the "
                          f"{minimum // 2**20} MB a chapter may write; raise it with "
                          "`ulimit -f unlimited` and re-run")


def check_inputs(name: str, profile: str, device: str, root: Path = REPO_ROOT) -> None:
    """Every check that must pass before a chapter starts."""
    check_choice("PROFILE", profile, PROFILE_NAMES)
    check_name(name, root)
    check_device_available(device)
    check_file_size_limit()
    registry.check_cache_env()


# --- one execution: lock, staging, environment, failure capture ----------------------------------


@contextlib.contextmanager
def chapter_lock(results_dir: Path, profile: str, name: str) -> Iterator[None]:
    """Hold an exclusive lock on ``name`` at ``profile`` in ``results_dir`` for one execution.

    Raises:
        ConfigError: another process is executing the same chapter into the same folder.
    """
    path = results_dir / ".checkpoints" / profile / f"{name}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise ConfigError(f"{name} at profile={profile} is already running ({holder}) into "
                              f"{results_dir}; wait for it to finish, or stop it first") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}\n")
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """Ctrl-C (SIGINT) stops the chapter even if the parent ignores SIGINT (as a shell does for
    background jobs): Python's default handler is installed for the execution, then restored."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@contextlib.contextmanager
def environment_variable(name: str, value: str) -> Iterator[None]:
    """Set ``$name`` for the duration (the kernel inherits it), then restore it."""
    before = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


@dataclass(frozen=True)
class Staging:
    """Where one execution writes before publishing: a folder inside ``results_dir`` (so the
    results file is moved within one filesystem) shared by the torchrun ranks."""

    folder: Path
    rank: int
    world: int
    name: str

    @property
    def notebook(self) -> Path:
        return self.folder / (f"{self.name}.ipynb" if self.rank == 0
                              else f"{self.name}.rank{self.rank}.ipynb")

    def results(self, profile: str) -> Path:
        return self.folder / profile / f"{self.name}.json"

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
        with contextlib.suppress(OSError):
            self.folder.parent.rmdir()  # .staging itself, once empty

    def mark_done(self) -> None:
        """A non-zero rank is finished with the folder (rank 0 then publishes)."""
        self.notebook.replace(self.folder / f"rank{self.rank}.done")

    def wait_for_ranks(self) -> None:
        """Block until ranks ``1..world-1`` are done (torchrun stops all ranks if one fails)."""
        while any(not (self.folder / f"rank{r}.done").exists() for r in range(1, self.world)):
            time.sleep(1.0)


def _torchrun_folder(name: str) -> str:
    return f"{name}-{os.environ.get('TORCHELASTIC_RUN_ID', 'torchrun')}"


def clear_stale_staging(name: str, results_dir: Path) -> None:
    """Remove staging folders of ``name`` left by an execution that was killed (called under
    :func:`chapter_lock`, so none of them belongs to a live run; under torchrun the folder of
    this run's ranks is kept)."""
    keep = _torchrun_folder(name) if "RANK" in os.environ else None
    for folder in (results_dir / ".staging").glob(f"{name}-*"):
        if folder.name != keep:
            shutil.rmtree(folder, ignore_errors=True)


def make_staging(name: str, results_dir: Path) -> Staging:
    """A fresh staging folder, or under torchrun the one folder of this run's ranks."""
    parent = results_dir / ".staging"
    parent.mkdir(parents=True, exist_ok=True)
    rank = int(os.environ.get("RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if all(v in os.environ for v in ("RANK", "WORLD_SIZE", "LOCAL_RANK")):
        # rank 0's kernel writes the results file there; each rank executes its own notebook copy
        folder = parent / _torchrun_folder(name)
        folder.mkdir(exist_ok=True)
    else:
        folder = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=parent))
    return Staging(folder, rank, world, name)


def capture_failure(staging: Staging, profile: str, root: Path) -> Path:
    """Keep a failed execution's notebook under ``root/failed/<profile>/``; drop the staging."""
    failed = root / "failed" / profile / staging.notebook.name
    failed.parent.mkdir(parents=True, exist_ok=True)
    if staging.notebook.exists():
        shutil.move(staging.notebook, failed)
    if staging.rank == 0:
        staging.remove()
    return failed


def run_notebook(source: Path, staging: Staging, profile: str, device: str, root: Path) -> None:
    """Execute ``source`` into the staging folder with papermill (the kernel writes its results
    file into the staging folder too)."""
    import papermill

    papermill.execute_notebook(
        str(source),
        str(staging.notebook),
        kernel_name=KERNEL_NAME,
        cwd=str(root),
        parameters={"profile": profile, "device": device, "results_dir": str(staging.folder)},
        progress_bar=False,
        log_output=False,
        report_mode=False,
    )


# --- publishing ----------------------------------------------------------------------------------

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
            # (helper "page", issue 15) papermill's injected copy is plumbing, not the page:
            # myst-nb skips cells tagged remove-cell (the parameters section shows the config)
            if "remove-cell" not in cell.metadata["tags"]:
                cell.metadata["tags"].append("remove-cell")


def use_stock_kernel(nb: nbformat.NotebookNode) -> None:
    """Name the stock ``python3`` kernel, so a downloaded notebook opens on any Jupyter."""
    nb.metadata["kernelspec"] = dict(PUBLISHED_KERNELSPEC)
    nb.metadata.get("papermill", {}).pop("kernel_name", None)


def _sibling_temp(target: Path) -> Path:
    """A temporary path in ``target``'s folder (same filesystem, so the final rename is atomic)."""
    handle, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(handle)
    umask = os.umask(0o022)
    os.umask(umask)
    os.chmod(name, 0o666 & ~umask)  # mkstemp makes it private; published files are not
    return Path(name)


def publish(staging: Staging, *, digest: str, profile: str, device: str, target: Path,
            results: Path, results_dir: Path, root: Path, wall_s: float) -> None:
    """Move a finished execution into place: the results file, then the notebook.

    Both are first written to temporary files next to their targets (so no rename crosses a
    filesystem), then renamed: results first, notebook last. The notebook records the sha256 of
    its own cells and of the results file, so a kill between the renames leaves a pair that
    :func:`staleness` reports as stale, never as up to date.
    """
    produced = staging.results(profile)
    if not produced.exists():
        raise RuntimeError(f"{staging.name} ran but wrote no results file {produced.name}; does "
                           "the notebook call run(config, results_dir=results_dir)?")
    from softmax_repro.pipeline.results import read_results

    try:  # the same checks every reader applies: a file that would be rejected never lands
        read_results(produced, profile)
    except ConfigError as error:
        raise RuntimeError(f"{staging.name} wrote results that cannot be published: {error}") \
            from None
    results_bytes = produced.read_bytes()
    nb = nbformat.read(staging.notebook, as_version=4)
    clean_outputs(nb)
    show_final_results_dir(nb, staging.folder, results_dir, root)
    use_stock_kernel(nb)
    cells = json.loads(nbformat.writes(nb))["cells"]
    nb.metadata[METADATA_KEY] = {"hash": digest, "profile": profile, "device": device,
                                 "wall_s": round(wall_s, 1), "cells_sha256": cells_hash(cells),
                                 "results_sha256": sha256_bytes(results_bytes)}
    target.parent.mkdir(parents=True, exist_ok=True)
    results.parent.mkdir(parents=True, exist_ok=True)
    temps = [_sibling_temp(results), _sibling_temp(target)]
    try:
        temps[0].write_bytes(results_bytes)
        temps[1].write_text(nbformat.writes(nb) + "\n")
        os.replace(temps[0], results)
        os.replace(temps[1], target)
    except OSError as error:
        hint = (" (the file-size limit, ulimit -f, was reached)" if error.errno == errno.EFBIG
                else "")
        raise RuntimeError(f"could not publish {staging.name} to {target} and {results}: "
                           f"{error}{hint}; the previous outputs are unchanged or stale, "
                           "re-run the chapter") from error
    finally:
        for temp in temps:
            temp.unlink(missing_ok=True)


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
        ConfigError: unknown chapter, profile or device, an unavailable device, a too small
            file-size limit, or the chapter already running into the same folder.
        RuntimeError: the notebook failed (its executed copy is saved under ``failed/``).
    """
    check_inputs(name, profile, device, root)
    source = root / "notebooks" / f"{name}.ipynb"
    target = out_dir / f"{name}.ipynb"
    results = results_dir / profile / f"{name}.json"
    digest = content_hash(source, profile, device, root)
    reason = None if force else staleness(target, results, digest)
    if not force and reason is None:
        print(f"[up to date] {name} ({profile})")
        return False
    rank = int(os.environ.get("RANK", "0"))
    lock = chapter_lock(results_dir, profile, name) if rank == 0 else contextlib.nullcontext()
    with lock:
        if rank == 0:
            clear_stale_staging(name, results_dir)
        staging = make_staging(name, results_dir)
        checkpoints = results_dir / ".checkpoints" / profile / digest[:16]
        print(f"[executing] {name} at profile={profile} device={device}"
              f"{f' ({reason})' if reason else ''}", flush=True)
        start = time.perf_counter()
        try:
            with interruptible(), environment_variable(CHECKPOINT_ENV, str(checkpoints)):
                run_notebook(source, staging, profile, device, root)
        except KeyboardInterrupt:
            capture_failure(staging, profile, root)
            raise
        except Exception as error:
            failed = capture_failure(staging, profile, root)
            raise RuntimeError(f"{name} failed at profile={profile}; the executed notebook with "
                               f"the traceback is {failed}") from error
        if rank != 0:  # rank 0 alone publishes, once every rank is done with the staging folder
            staging.mark_done()
            print(f"[done] {name} on rank {rank}", flush=True)
            return True
        staging.wait_for_ranks()
        try:
            publish(staging, digest=digest, profile=profile, device=device, target=target,
                    results=results, results_dir=results_dir, root=root,
                    wall_s=time.perf_counter() - start)
        except BaseException as error:
            failed = capture_failure(staging, profile, root)  # the executed notebook is kept
            if isinstance(error, RuntimeError):
                raise RuntimeError(f"{error} (the executed notebook is {failed})") from error
            raise
        staging.remove()
        shutil.rmtree(checkpoints, ignore_errors=True)
    print(f"[done] {name} in {time.perf_counter() - start:.0f} s -> {target}", flush=True)
    return True


# --- verify --------------------------------------------------------------------------------------


def check_tolerance(text: str) -> float:
    """``TOLERANCE`` as a finite number >= 0, or a :class:`ConfigError` saying what is allowed."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        value = float("nan")
    if not (value >= 0 and value != float("inf")):
        raise ConfigError(f"TOLERANCE={text!r} is not allowed; give a finite number >= 0, the "
                          "largest allowed |fresh − committed| (0 = bit-identical)")
    return value


def verify(profile: str, names: Sequence[str], results_dir: Path, tolerance: float) -> int:
    """Re-execute ``names`` at ``profile`` into a scratch folder and compare with ``results_dir``.

    Every committed results file is read (and checked) before anything runs. Prints a table of
    matches and mismatches; returns 0 when every number matches, else 1.
    """
    import pandas as pd

    from softmax_repro.pipeline.results import read_results
    from softmax_repro.pipeline.verify import verify_chapter

    for name in names:
        check_name(name)
    committed = {n: results_dir / profile / f"{n}.json" for n in names}
    for path in committed.values():
        if path.exists():
            read_results(path, profile)  # a broken or foreign file stops here, before any run
    scratch = Path(tempfile.mkdtemp(prefix="verify-"))
    summary = []
    try:
        for name, path in committed.items():
            if not path.exists():
                summary.append({"chapter": name, "numbers": 0,
                                "mismatches": f"no committed results at {path}"})
                continue
            execute_chapter(name, profile, out_dir=scratch / "chapters",
                            results_dir=scratch / "results", force=True)
            table = verify_chapter(scratch / "results" / profile / f"{name}.json", path, profile,
                                   tolerance)
            bad = table[~table["match"]]
            if not bad.empty:
                print(f"mismatches in {name}:\n{bad.to_string(index=False)}")
            summary.append({"chapter": name, "numbers": len(table), "mismatches": len(bad),
                            "largest difference": table["difference"].max()})
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    frame = pd.DataFrame(summary)
    print(frame.to_string(index=False))
    ok = all(isinstance(m, int) and m == 0 for m in frame["mismatches"])
    print("verify: all numbers match" if ok else "verify: MISMATCH", flush=True)
    return 0 if ok else 1


# --- command line --------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad command line in one sentence and exits 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"error: {message}; see `make help` or `{self.prog} --help`\n")


def check_nproc(text: str) -> int:
    """``NPROC`` as an integer >= 1."""
    if not re.fullmatch(r"[0-9]+", str(text).strip()) or int(text) < 1:
        raise ConfigError(f"NPROC={text!r} is not allowed; give the number of processes per "
                          "chapter as a whole number >= 1 (1 = no torchrun; N = N GPUs)")
    return int(text)


def relaunch_under_torchrun(nproc: int, argv: Sequence[str]) -> None:
    """Replace this process by ``torchrun --nproc_per_node nproc`` running the same command
    (``$TORCHRUN_ARGS``, default ``--standalone``, go to torchrun)."""
    extra = shlex.split(os.environ.get("TORCHRUN_ARGS", "--standalone"))
    command = [sys.executable, "-m", "torch.distributed.run", *extra, "--nproc_per_node",
               str(nproc), "-m", "softmax_repro.pipeline.runner", *argv]
    sys.stdout.flush()
    os.execv(sys.executable, command)


def without_option(argv: Sequence[str], option: str) -> list[str]:
    """``argv`` minus ``option VALUE`` and ``option=VALUE``."""
    kept: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == option:
            skip = True
        elif not arg.startswith(f"{option}="):
            kept.append(arg)
    return kept


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m softmax_repro.pipeline.runner", description=__doc__,
                     formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    ex = sub.add_parser("execute", help="execute stale chapters with papermill", allow_abbrev=False)
    ex.add_argument("--profile", default="cpu")
    ex.add_argument("--name", action="append", help="chapter (repeatable; default: all)")
    ex.add_argument("--device", default="auto")
    ex.add_argument("--nproc", default="1", help="processes per chapter (> 1: torchrun)")
    ex.add_argument("--force", action="store_true", help="execute even if up to date")
    ex.add_argument("--out-dir", type=Path, default=REPO_ROOT / "book" / "chapters")
    ex.add_argument("--results-dir", type=Path, default=REPO_ROOT / "results")
    ver = sub.add_parser("verify", help="re-execute chapters into a scratch folder and compare "
                         "every number with the committed results", allow_abbrev=False)
    ver.add_argument("--profile", default="cpu")
    ver.add_argument("--name", action="append", help="chapter (repeatable; default: all)")
    ver.add_argument("--tolerance", default="0",
                     help="largest allowed |fresh − committed| (default 0: bit-identical)")
    ver.add_argument("--results-dir", type=Path, default=REPO_ROOT / "results")
    rep = sub.add_parser("report", help="generate the ledger and status pages", allow_abbrev=False)
    rep.add_argument("--profile", default="cpu")
    rep.add_argument("--book-dir", type=Path, default=REPO_ROOT / "book")
    rep.add_argument("--results-dir", type=Path, default=REPO_ROOT / "results")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    try:
        check_choice("PROFILE", args.profile, PROFILE_NAMES)
        if args.command == "report":
            from softmax_repro.pipeline.report import write_report

            for path in write_report(args.profile, args.results_dir, args.book_dir):
                print(f"[wrote] {path}")
            return 0
        names = args.name or chapter_names()
        for name in names:
            check_name(name)
        if args.command == "verify":
            return verify(args.profile, names, args.results_dir, check_tolerance(args.tolerance))
        nproc = check_nproc(args.nproc)
        for name in names:
            check_inputs(name, args.profile, args.device)
        if nproc > 1 and "RANK" not in os.environ:
            relaunch_under_torchrun(nproc, without_option(argv, "--nproc"))
        ran = [n for n in names if execute_chapter(n, args.profile, device=args.device,
                                                   out_dir=args.out_dir,
                                                   results_dir=args.results_dir,
                                                   force=args.force)]
        print(f"executed {len(ran)} of {len(names)} chapter(s)")
        return 0
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except RuntimeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: finished runs are checkpointed; the same command resumes them",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
