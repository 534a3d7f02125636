"""Bad input across chapters: each invalid parameter is rejected before any work starts, with a
message naming the parameter and what is allowed (issue: trust)."""

import importlib
import time

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
