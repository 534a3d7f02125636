"""The runner: staleness hashing, output cleaning, atomic execution and failure handling."""

import json
import os
import shutil
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
import time
from pathlib import Path
from softmax_repro.pipeline import results
from softmax_repro.engine import training
from softmax_repro.experiments import ch01_balanced_softmax as balanced_softmax
log = Path(results_dir).parents[1] / "executed_runs.txt"

def run_one(run):
    with open(log, "a") as handle:
        handle.write(f"{run['seed']}\\n")
    time.sleep(1.5)
    return [{"method": "m", "seed": run["seed"], "metric": "x", "value": run["seed"] / 7}]

rows = training.run_grid([{"seed": s} for s in range(4)], run_one, chapter="01_toy")
results.write_results("01_toy", balanced_softmax.make_config(profile), rows,
                      results_dir=results_dir, started=results.now(), wall_s=0.0, device="cpu")
"""


@pytest.mark.parametrize("signal_name", ["SIGINT", "SIGKILL"])
def test_interrupted_chapter_resumes_without_redoing_finished_runs(toy_root, signal_name):
    import signal
    import subprocess
    import sys
    import time

    nbformat.write(_notebook(GRID_SOURCE), toy_root / "notebooks" / "01_toy.ipynb")
    code = ("import sys; from pathlib import Path; from softmax_repro.pipeline import runner; "
            "root = Path(sys.argv[1]); runner.execute_chapter('01_toy', 'smoke', "
            "out_dir=root / 'book' / 'chapters', results_dir=root / 'results', root=root)")
    log = toy_root / "results" / "executed_runs.txt"
    target = toy_root / "book" / "chapters" / "01_toy.ipynb"
    result = toy_root / "results" / "smoke" / "01_toy.json"
    proc = subprocess.Popen([sys.executable, "-c", code, str(toy_root)], start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and (not log.exists() or len(log.read_text().split()) < 3):
        time.sleep(0.2)
    os.killpg(proc.pid, getattr(signal, signal_name))
    proc.wait(timeout=60)
    assert proc.returncode != 0
    assert not target.exists() and not result.exists()  # nothing looks complete
    started_before = log.read_text().split()
    assert _execute(toy_root) is True
    executed = log.read_text().split()
    rerun = executed[len(started_before):]
    finished_before = len(started_before) - 1  # the last started run was cut off
    assert rerun == [str(s) for s in range(finished_before, 4)]
    rows = json.loads(result.read_text())["rows"]
    assert [r["value"] for r in rows] == [s / 7 for s in range(4)]
    assert not list((toy_root / "results" / ".checkpoints").rglob("*.json"))
