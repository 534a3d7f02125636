"""The runner: staleness hashing, output cleaning, atomic execution and failure handling."""

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import nbformat
import pytest

from softmax_repro.config import ConfigError
from softmax_repro.pipeline import runner

ROOT = Path(__file__).resolve().parents[1]

GOOD_SOURCE = """
from softmax_repro.pipeline import results
from softmax_repro.experiments import ch01_balanced_softmax as balanced_softmax
config = balanced_softmax.make_config(profile)
results.write_results("01_toy", config, [{"method": "m", "seed": 0, "metric": "x", "value": 1.0}],
                      results_dir=results_dir, started=results.now(), wall_s=0.0, device="cpu")
print("progress 1/2\\rprogress 2/2\\rdone")
"""


def _notebook(source: str) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell(
        'profile = "cpu"\nseeds = None\ndevice = "auto"\noverrides = {}\nresults_dir = "results"')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell(source)]
    nb.metadata["kernelspec"] = {"name": runner.KERNEL_NAME, "display_name": "Python",
                                 "language": "python"}
    return nb


@pytest.fixture
def toy_root(tmp_path):
    """A minimal repository: one notebook, a copy of src/ and data/ (for the hash)."""
    (tmp_path / "notebooks").mkdir()
    nbformat.write(_notebook(GOOD_SOURCE), tmp_path / "notebooks" / "01_toy.ipynb")
    shutil.copytree(ROOT / "src", tmp_path / "src")
    shutil.copytree(ROOT / "data", tmp_path / "data", ignore=shutil.ignore_patterns("cache"))
    return tmp_path


def _execute(root, **kw):
    return runner.execute_chapter("01_toy", "smoke", out_dir=root / "book" / "chapters",
                                  results_dir=root / "results", root=root, **kw)


def test_hash_changes_with_notebook_profile_and_library(toy_root):
    nb = toy_root / "notebooks" / "01_toy.ipynb"
    base = runner.content_hash(nb, "cpu", "auto", toy_root)
    assert runner.content_hash(nb, "cpu", "auto", toy_root) == base
    assert runner.content_hash(nb, "smoke", "auto", toy_root) != base
    assert runner.content_hash(nb, "cpu", "cpu", toy_root) != base
    (toy_root / "src" / "softmax_repro" / "methods" / "losses.py").write_text("# edited\n", "utf-8")
    assert runner.content_hash(nb, "cpu", "auto", toy_root) != base
    edited = runner.content_hash(nb, "cpu", "auto", toy_root)
    with open(toy_root / "data" / "claims" / "01_balanced_softmax.yaml", "a") as handle:
        handle.write("\n# a comment\n")
    assert runner.content_hash(nb, "cpu", "auto", toy_root) != edited


def test_execute_then_up_to_date_then_failure_keeps_good_outputs(toy_root):
    assert _execute(toy_root) is True
    target = toy_root / "book" / "chapters" / "01_toy.ipynb"
    result = toy_root / "results" / "smoke" / "01_toy.json"
    assert target.exists() and result.exists()
    executed = json.loads(target.read_text())
    assert executed["metadata"]["softmax_repro"]["profile"] == "smoke"
    stream = executed["cells"][-1]["outputs"][0]["text"]
    assert "done" in "".join(stream) and "progress" not in "".join(stream)
    assert not list((toy_root / "results").glob(".staging/*"))
    injected = next(c for c in executed["cells"]
                    if "injected-parameters" in c["metadata"].get("tags", []))
    assert 'results_dir = "results"' in "".join(injected["source"])

    assert _execute(toy_root) is False  # nothing changed: nothing executes

    good_nb, good_result = target.read_bytes(), result.read_bytes()
    nbformat.write(_notebook(GOOD_SOURCE + "\nraise RuntimeError('boom')"),
                   toy_root / "notebooks" / "01_toy.ipynb")
    with pytest.raises(RuntimeError, match="failed at profile=smoke"):
        _execute(toy_root)
    failed = toy_root / "failed" / "smoke" / "01_toy.ipynb"
    assert failed.exists() and "boom" in failed.read_text()
    assert target.read_bytes() == good_nb and result.read_bytes() == good_result


def test_a_notebook_that_writes_no_results_does_not_land(toy_root):
    nbformat.write(_notebook("x = 1"), toy_root / "notebooks" / "01_toy.ipynb")
    with pytest.raises(RuntimeError, match="wrote no results file"):
        _execute(toy_root)
    assert not (toy_root / "book" / "chapters" / "01_toy.ipynb").exists()


def test_unknown_chapter_profile_or_device_is_rejected(toy_root):
    with pytest.raises(ConfigError, match="NAME='02_nope'"):
        runner.execute_chapter("02_nope", "smoke", root=toy_root)
    with pytest.raises(ConfigError, match="PROFILE='tiny'"):
        runner.execute_chapter("01_toy", "tiny", root=toy_root)
    with pytest.raises(ConfigError, match="device='gpu0'"):
        runner.execute_chapter("01_toy", "smoke", device="gpu0", root=toy_root)


def test_cli_reports_bad_profile_with_exit_code_2(capsys):
    assert runner.main(["execute", "--profile", "huge"]) == 2
    assert "PROFILE='huge'" in capsys.readouterr().err


def test_clean_outputs_strips_progress_redraws_and_widgets():
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("x")
    cell.outputs = [nbformat.v4.new_output("stream", name="stderr",
                                           text="run:  10%|#\rrun:  50%|#####\rrun: 100%|##|\n"),
                    nbformat.v4.new_output("display_data", data={
                        "application/vnd.jupyter.widget-view+json": {"model_id": "x"},
                        "text/plain": "bar"})]
    nb.cells = [cell]
    nb.metadata["widgets"] = {"state": {}}
    runner.clean_outputs(nb)
    assert cell.outputs[0]["text"] == "run: 100%|##|\n"
    assert "application/vnd.jupyter.widget-view+json" not in cell.outputs[1]["data"]
    assert "widgets" not in nb.metadata


def test_verify_compares_numbers_exactly_or_within_tolerance():
    import pandas as pd

    from softmax_repro.pipeline.verify import compare_rows

    committed = pd.DataFrame({"method": ["a", "b"], "seed": [0, 0], "metric": ["x", "x"],
                              "value": [0.5, 0.25], "wall_s": [1.0, 2.0]})
    fresh = committed.assign(wall_s=[9.0, 9.0])
    assert compare_rows(fresh, committed)["match"].all()
    drifted = committed.assign(value=[0.5, 0.2501])
    table = compare_rows(drifted, committed)
    assert table["match"].tolist() == [True, False]
    assert compare_rows(drifted, committed, tolerance=1e-3)["match"].all()
    missing = compare_rows(committed.iloc[:1], committed)
    assert missing["match"].tolist() == [True, False]
    timed = pd.concat([committed, committed.assign(metric="train_s", value=[3.0, 4.0])])
    assert len(compare_rows(timed.assign(value=timed["value"] * 2), timed)) == 2  # timings left out


def test_timing_metrics_are_recognised():
    from softmax_repro.pipeline.results import is_timing_metric

    assert all(map(is_timing_metric, ["train_s", "train_s_inc", "tokens_per_s", "wall_s"]))
    assert not any(map(is_timing_metric, ["top1", "nll", "avg_inc_acc", "senses_per_word"]))


GRID_SOURCE = """
import os
import time
from pathlib import Path
from softmax_repro.pipeline import results
from softmax_repro.engine import training
from softmax_repro.experiments import ch01_balanced_softmax as balanced_softmax
log = Path(results_dir).parents[1] / "executed_runs.txt"
gate = Path(results_dir).parents[1] / "release"
(Path(results_dir).parents[1] / "kernel.pid").write_text(str(os.getpid()))

def run_one(run):
    with open(log, "a") as handle:
        handle.write(f"{run['seed']}\\n")
    deadline = time.monotonic() + 600
    while run["seed"] >= 2 and not gate.exists() and time.monotonic() < deadline:
        time.sleep(0.05)  # runs 2 and 3 wait for the test: no race with the clock
    return [{"method": "m", "seed": run["seed"], "metric": "x", "value": run["seed"] / 7}]

rows = training.run_grid([{"seed": s} for s in range(4)], run_one, chapter="01_toy")
results.write_results("01_toy", balanced_softmax.make_config(profile), rows,
                      results_dir=results_dir, started=results.now(), wall_s=0.0, device="cpu")
"""


def _wait_until_gone(pid: int, timeout: float = 120.0) -> bool:
    """Whether process ``pid`` has exited (or is a zombie) within ``timeout`` seconds."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return True
        if state in ("Z", "X"):
            return True
        time.sleep(0.2)
    return False


def _start_in_child(root: Path, sigint: str):
    """Run the toy chapter in a new session whose SIGINT disposition is ``sigint`` (``ignored``:
    as for a job started in the background by a non-interactive shell)."""
    import signal
    import subprocess
    import sys

    def preexec() -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN if sigint == "ignored" else signal.SIG_DFL)

    code = ("import sys; from pathlib import Path; from softmax_repro.pipeline import runner; "
            "root = Path(sys.argv[1]); runner.execute_chapter('01_toy', 'smoke', "
            "out_dir=root / 'book' / 'chapters', results_dir=root / 'results', root=root)")
    return subprocess.Popen([sys.executable, "-c", code, str(root)], start_new_session=True,
                            preexec_fn=preexec)


@pytest.mark.parametrize(("signal_name", "parent_sigint"),
                         [("SIGINT", "default"), ("SIGINT", "ignored"), ("SIGKILL", "default")])
def test_interrupted_chapter_resumes_without_redoing_finished_runs(toy_root, signal_name,
                                                                   parent_sigint):
    import signal
    import time

    nbformat.write(_notebook(GRID_SOURCE), toy_root / "notebooks" / "01_toy.ipynb")
    log = toy_root / "results" / "executed_runs.txt"
    target = toy_root / "book" / "chapters" / "01_toy.ipynb"
    result = toy_root / "results" / "smoke" / "01_toy.json"
    proc = _start_in_child(toy_root, parent_sigint)
    try:
        deadline = time.monotonic() + 300  # generous: a loaded machine starts kernels slowly
        while time.monotonic() < deadline and (not log.exists()
                                               or len(log.read_text().split()) < 3):
            assert proc.poll() is None, "the chapter ended before it was interrupted"
            time.sleep(0.2)
        assert log.read_text().split() == ["0", "1", "2"]  # run 2 now waits at the gate
        os.killpg(proc.pid, getattr(signal, signal_name))
        proc.wait(timeout=120)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # the kernel too, whatever happened
    assert proc.returncode != 0
    assert not target.exists() and not result.exists()  # nothing looks complete
    # the kernel (a session of its own) exits once its runner is gone (ipykernel polls its
    # parent every second); only then may the gated runs go on
    kernel = int((toy_root / "results" / "kernel.pid").read_text())
    assert _wait_until_gone(kernel), f"the kernel {kernel} outlived its runner"
    (toy_root / "results" / "release").touch()  # where the notebook looks (see GRID_SOURCE)
    assert _execute(toy_root) is True
    assert log.read_text().split() == ["0", "1", "2", "2", "3"]  # runs 0 and 1 were resumed
    rows = json.loads(result.read_text())["rows"]
    assert [r["value"] for r in rows] == [s / 7 for s in range(4)]
    assert not list((toy_root / "results" / ".checkpoints").rglob("*.json"))
    assert not list((toy_root / "results").glob(".staging/*"))  # a killed run's folder too


def _paths(root):
    return root / "book" / "chapters" / "01_toy.ipynb", root / "results" / "smoke" / "01_toy.json"


def test_published_notebook_names_the_stock_kernel_and_both_hashes(toy_root):
    _execute(toy_root)
    target, result = _paths(toy_root)
    executed = json.loads(target.read_text())
    assert executed["metadata"]["kernelspec"]["name"] == "python3"
    assert runner.KERNEL_NAME not in json.dumps(executed["metadata"])
    meta = executed["metadata"]["softmax_repro"]
    assert meta["results_sha256"] == runner.sha256_bytes(result.read_bytes())
    assert meta["cells_sha256"] == runner.cells_hash(executed["cells"])
    umask = os.umask(0o022)
    os.umask(umask)
    for path in (target, result):  # readable like any file written here, not private
        assert path.stat().st_mode & 0o777 == 0o666 & ~umask


@pytest.mark.parametrize("edit", ["output", "results"])
def test_an_edited_output_or_results_file_is_stale(toy_root, edit):
    assert _execute(toy_root) is True
    target, result = _paths(toy_root)
    if edit == "output":
        nb = json.loads(target.read_text())
        nb["cells"][-1]["outputs"][0]["text"] = ["done, and a number typed by hand: 0.99\n"]
        target.write_text(json.dumps(nb))
    else:
        payload = json.loads(result.read_text())
        payload["rows"][0]["value"] = 0.99
        result.write_text(json.dumps(payload))
    digest = runner.content_hash(toy_root / "notebooks" / "01_toy.ipynb", "smoke", "auto",
                                 toy_root)
    expected = {"output": "edited since it was published", "results": "does not match"}[edit]
    assert expected in runner.staleness(target, result, digest)
    assert _execute(toy_root) is True  # re-run, not "[up to date]"
    assert runner.staleness(target, result, digest) is None


def test_a_kill_between_the_two_renames_leaves_a_stale_pair(toy_root, monkeypatch):
    assert _execute(toy_root) is True
    target, result = _paths(toy_root)
    real_replace = os.replace

    def killed_before_the_notebook(src, dst):
        if Path(dst) == target:
            raise OSError("simulated kill between publishing the results and the notebook")
        return real_replace(src, dst)

    monkeypatch.setattr(runner.os, "replace", killed_before_the_notebook)
    with pytest.raises(RuntimeError, match="could not publish"):
        _execute(toy_root, force=True)
    monkeypatch.undo()
    assert not list(target.parent.glob(".*.tmp")) and not list(result.parent.glob(".*.tmp"))
    assert not list((toy_root / "results").glob(".staging/*"))
    digest = runner.content_hash(toy_root / "notebooks" / "01_toy.ipynb", "smoke", "auto",
                                 toy_root)
    assert "does not match" in runner.staleness(target, result, digest)
    assert _execute(toy_root) is True  # the mismatched pair is re-run, never "[up to date]"


def test_publishing_across_filesystems(toy_root):
    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(toy_root).st_dev:
        pytest.skip("no second filesystem (/dev/shm) to publish the book into")
    book = Path(tempfile.mkdtemp(prefix="book-", dir=shm))
    try:
        assert runner.execute_chapter("01_toy", "smoke", out_dir=book,
                                      results_dir=toy_root / "results", root=toy_root) is True
        assert (book / "01_toy.ipynb").exists() and _paths(toy_root)[1].exists()
        assert not list(book.glob(".*.tmp")) and not list((toy_root / "results").glob(".staging*"))
    finally:
        shutil.rmtree(book, ignore_errors=True)


def test_a_second_run_of_the_same_chapter_is_refused_while_one_runs(toy_root):
    with runner.chapter_lock(toy_root / "results", "smoke", "01_toy"), \
            pytest.raises(ConfigError, match=r"01_toy at profile=smoke is already running \(pid"):
        _execute(toy_root, force=True)
    assert _execute(toy_root) is True  # the lock is released with its holder


def test_the_runner_and_the_training_loop_agree_on_the_checkpoint_variable():
    from softmax_repro.engine.training import CHECKPOINT_ENV

    assert runner.CHECKPOINT_ENV == CHECKPOINT_ENV


def test_results_that_readers_would_reject_never_land(toy_root):
    assert _execute(toy_root) is True
    target, result = _paths(toy_root)
    good_nb, good_result = target.read_bytes(), result.read_bytes()
    nbformat.write(_notebook(GOOD_SOURCE.replace('"value": 1.0', '"value": float("nan")')),
                   toy_root / "notebooks" / "01_toy.ipynb")
    with pytest.raises(RuntimeError, match=r"cannot be published: .*row 0 .*not a finite number"):
        _execute(toy_root)
    assert target.read_bytes() == good_nb and result.read_bytes() == good_result
    assert (toy_root / "failed" / "smoke" / "01_toy.ipynb").exists()  # the run is not lost
    assert not list((toy_root / "results").glob(".staging/*"))
