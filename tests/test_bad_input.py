"""Bad input across chapters, the command line and Make: each invalid parameter is rejected before
any work starts, with a message naming the parameter and what is allowed (issues: trust, 16)."""

import importlib
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from softmax_repro.config import ConfigError
from softmax_repro.pipeline import claims, results

B = "ch01_balanced_softmax"
I = "ch02_incremental_bsce"  # noqa: E741
K = "ch03_kerbs"
M = "ch04_softmax_mutual_information"

CASES = [
    (B, {"profile": "laptop"}, "profile='laptop' is not allowed; choose one of: 'smoke', 'cpu'"),
    (B, {"seeds": []}, "seeds=[] is empty"),
    (B, {"seeds": [1, -2]}, "seeds contains -2"),
    (B, {"device": "tpu"}, "device='tpu' is not allowed; choose 'auto', 'cpu', 'cuda'"),
    (B, {"overrides": {"datasets": ["imagenet"]}}, "datasets item='imagenet' is not allowed"),
    (B, {"overrides": {"imbalances": [0.5]}}, "imbalance=0.5 is not allowed"),
    (B, {"overrides": {"methods": ["ldam"]}}, "methods item='ldam' is not allowed; choose one of"),
    (B, {"overrides": {"steps": 0}}, "steps=0"),
    (B, {"overrides": {"n_max": -5}}, "n_max=-5"),
    (B, {"overrides": {"epochs_typo": 3}}, "overrides has unknown key 'epochs_typo'; allowed keys"),
    (I, {"overrides": {"datasets": ["cifar"]}}, "datasets item='cifar' is not allowed"),
    (I, {"overrides": {"methods": ["ewc_m20"]}}, "method 'ewc_m20' is not allowed"),
    (I, {"overrides": {"base_classes": 0}}, "base_classes=0 must lie in 1..9"),
    (I, {"overrides": {"increments": [0]}}, "num_steps=0 is not allowed"),
    (I, {"overrides": {"kd_temperature": -1.0}}, "kd_temperature=-1.0 is not allowed"),
    (K, {"overrides": {"synthetic_methods": ["lstm"]}}, "item='lstm' is not allowed"),
    (K, {"overrides": {"vocab_size": 0}}, "vocab_size=0 is not allowed"),
    (K, {"overrides": {"senses_per_word": 5}}, "senses_per_word=5 is not allowed"),
    (K, {"overrides": {"bptt": -2}}, "bptt=-2 is not allowed"),
    (K, {"overrides": {"cell": "transformer"}}, "cell='transformer' is not allowed; choose one of"),
    (M, {"overrides": {"dims": [0]}}, "dims item=0 is not allowed"),
    (M, {"overrides": {"n_per_class": 0}}, "n_per_class=0 is not allowed"),
    (M, {"overrides": {"bound_methods": ["dv"]}}, "bound_methods item='dv' is not allowed"),
    (M, {"overrides": {"box_threshold": 1.5}}, "box_threshold=1.5 is not allowed; it must lie in"),
]


def _module(name):
    return importlib.import_module(f"softmax_repro.experiments.{name}")


@pytest.mark.parametrize(("chapter", "kwargs", "message"), CASES,
                         ids=[f"{c}-{i}" for i, (c, _, _) in enumerate(CASES)])
def test_invalid_parameter_is_rejected_with_its_name(chapter, kwargs, message):
    kwargs = dict(kwargs)
    profile = kwargs.pop("profile", "cpu")
    with pytest.raises(ConfigError) as error:
        _module(chapter).make_config(profile, **kwargs)
    assert message in str(error.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
@pytest.mark.parametrize("chapter", [B, I, K, M])
def test_unavailable_device_is_rejected_before_work(chapter, tmp_path):
    module = _module(chapter)
    config = module.make_config("smoke", device="cuda")
    start = time.perf_counter()
    with pytest.raises(ConfigError, match="device='cuda' is not available"):
        module.run(config, results_dir=str(tmp_path))
    assert time.perf_counter() - start < 5, "the device must be checked before any work"
    assert not list(tmp_path.rglob("*.json"))


def test_malformed_claims_entry_is_rejected():
    with pytest.raises(ConfigError, match=r"entry 'x': give exactly one of tests"):
        claims.parse_claims([{"id": "x", "paper": "p", "claim": "c"}])


def test_results_file_from_another_profile_is_rejected(tmp_path):
    config = _module(B).make_config("smoke")
    path = results.write_results("t", config, [{"method": "m", "seed": 0, "metric": "x",
                                                "value": 1.0}], results_dir=tmp_path,
                                 started=results.now(), wall_s=0.0, device="cpu")
    with pytest.raises(ConfigError, match="written at profile='smoke', but profile='cpu'"):
        results.read_results(path, profile="cpu")


# --- the command line and Make: every bad value named, with its fix, before any work ----------

ROOT = Path(__file__).resolve().parents[1]
MAKE = ["make", "--no-print-directory", "-o", ".venv/.setup-stamp"]  # never re-runs setup
CH = "01_balanced_softmax"


def _runner(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "softmax_repro.pipeline.runner", *args],
                          capture_output=True, text=True, cwd=ROOT, timeout=300, **kw)


@pytest.mark.parametrize(("args", "message"), [
    (["--nproc=0"], "NPROC='0' is not allowed; give the number of processes"),
    (["--nproc=-1"], "NPROC='-1' is not allowed"),
    (["--nproc=abc"], "NPROC='abc' is not allowed"),
    (["--profile="], "PROFILE='' is not allowed; choose one of: 'smoke', 'cpu', 'paper'"),
    (["--profile=-x"], "PROFILE='-x' is not allowed"),
    (["--name=01 balanced softmax"], "NAME='01 balanced softmax' is not a chapter; choose one"),
    (["--device=tpu"], "device='tpu' is not allowed"),
])
def test_bad_command_line_values_are_named_without_argparse_noise(args, message, tmp_path):
    out = _runner("execute", f"--name={CH}", *args, f"--out-dir={tmp_path}/book",
                  f"--results-dir={tmp_path}/results")
    assert out.returncode == 2 and message in out.stderr, out.stderr
    assert "usage:" not in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "results").exists()  # rejected before any work


def test_an_unknown_or_abbreviated_option_is_one_sentence_pointing_at_help(tmp_path):
    for option in ("--profil=smoke", "--colour"):  # no abbreviations: --profil is not --profile
        out = _runner("execute", f"--name={CH}", option, f"--out-dir={tmp_path}/book",
                      f"--results-dir={tmp_path}/results")
        assert out.returncode == 2 and "usage:" not in out.stderr and "make help" in out.stderr
        assert "[executing]" not in out.stdout and not (tmp_path / "results").exists()


@pytest.mark.parametrize(("variable", "value", "message"), [
    ("NPROC", "0", "NPROC='0' is not allowed"),
    ("NPROC", "abc", "NPROC='abc' is not allowed"),
    ("PROFILE", "", "PROFILE='' is not allowed"),
    ("NAME", "01 balanced", "NAME='01 balanced' is not a chapter"),
])
def test_make_names_the_bad_variable(variable, value, message, tmp_path):
    args = [f"{variable}={value}"] + ([] if variable == "NAME" else [f"NAME={CH}"])
    out = subprocess.run([*MAKE, "chapter", *args, f"BOOK={tmp_path}/book",
                          f"RESULTS={tmp_path}/results"], cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode != 0 and message in out.stderr, out.stderr
    assert "usage:" not in out.stderr and "[executing]" not in out.stdout


@pytest.mark.skipif(torch.cuda.device_count() > 7, reason="this machine has a cuda:7")
def test_an_unavailable_gpu_is_named_in_the_terminal(tmp_path):
    out = subprocess.run([*MAKE, "chapter", f"NAME={CH}", "PROFILE=smoke", "DEVICE=cuda:7",
                          f"BOOK={tmp_path}/book", f"RESULTS={tmp_path}/results"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode != 0
    assert "device='cuda:7' is not available: this machine has" in out.stderr
    assert "DEVICE=cpu" in out.stderr and "[executing]" not in out.stdout  # before the notebook


def test_a_small_file_size_limit_is_named_before_any_work(tmp_path):
    import resource

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE,
                           (2**20, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))

    out = _runner("execute", "--profile=smoke", f"--name={CH}", f"--out-dir={tmp_path}/book",
                  f"--results-dir={tmp_path}/results", preexec_fn=limit)
    assert out.returncode == 2, out.stderr
    assert "the file-size limit (ulimit -f) is 1048576 bytes" in out.stderr
    assert "ulimit -f unlimited" in out.stderr and "[executing]" not in out.stdout


def test_invalid_claims_yaml_names_the_file(tmp_path):
    bad = tmp_path / "09_bad.yaml"
    bad.write_text("- id: x\n  claim: [unclosed\n")
    with pytest.raises(ConfigError, match=rf"{bad}: .*YAML"):
        claims.load_claims(bad)
