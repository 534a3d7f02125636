"""Config validation: every bad value is rejected before work, naming the parameter."""

import dataclasses

import pytest

from softmax_repro.config import BaseConfig, ConfigError, check_seeds, make_config
from softmax_repro.experiments import ch01_balanced_softmax as balanced_softmax


@dataclasses.dataclass(frozen=True)
class Toy(BaseConfig):
    width: int = 3


TOY_PROFILES = {"smoke": {"seeds": (0,)}, "cpu": {"seeds": (0, 1, 2, 3, 4), "width": 5}}


def test_profile_values_and_overrides():
    cfg = make_config(Toy, TOY_PROFILES, "cpu", overrides={"width": 7})
    assert cfg.width == 7 and cfg.seeds == (0, 1, 2, 3, 4) and cfg.device == "auto"
    assert make_config(Toy, TOY_PROFILES, "smoke", seeds=[3, 4]).seeds == (3, 4)


def test_lists_become_tuples_and_config_is_hashable():
    cfg = make_config(Toy, TOY_PROFILES, "cpu", seeds=[1, 2])
    assert isinstance(cfg.seeds, tuple)
    hash(cfg)
    assert cfg.to_dict()["seeds"] == [1, 2]


BAD_PARAMETERS = [
    ({"profile": "gpu"}, "profile='gpu'"),
    ({"profile": "cpu", "seeds": []}, "seeds=[] is empty"),
    ({"profile": "cpu", "seeds": [0, 0]}, "duplicates"),
    ({"profile": "cpu", "seeds": [-1]}, "seeds contains -1"),
    ({"profile": "cpu", "seeds": "0,1"}, "must be a list"),
    ({"profile": "cpu", "device": "tpu"}, "device='tpu'"),
    ({"profile": "cpu", "overrides": {"steps": 0}}, "steps=0"),
    ({"profile": "cpu", "overrides": {"steps": -3}}, "steps=-3"),
    ({"profile": "cpu", "overrides": {"imbalances": [0.5]}}, "imbalance=0.5"),
    ({"profile": "cpu", "overrides": {"methods": ["softmaxx"]}}, "methods item='softmaxx'"),
    ({"profile": "cpu", "overrides": {"datasets": ["cifar"]}}, "datasets item='cifar'"),
    ({"profile": "cpu", "overrides": {"model": "vgg"}}, "model='vgg'"),
    ({"profile": "cpu", "overrides": {"lr": 0}}, "lr=0"),
    ({"profile": "cpu", "overrides": {"batch_size": 2.5}}, "batch_size=2.5"),
    ({"profile": "cpu", "overrides": {"n_max": 0}}, "n_max=0"),
    ({"profile": "cpu", "overrides": {"learning_rate": 0.1}}, "unknown key 'learning_rate'"),
    ({"profile": "cpu", "overrides": {"profile": "paper"}}, "pass profile as its own parameter"),
    ({"profile": "cpu", "overrides": {"imbalances": [1000], "n_max": 100}}, "leaves class 9 empty"),
]


@pytest.mark.parametrize(("kwargs", "message"), BAD_PARAMETERS)
def test_bad_parameters_are_rejected_with_their_name(kwargs, message):
    with pytest.raises(ConfigError) as error:
        balanced_softmax.make_config(**kwargs)
    assert message in str(error.value)


def test_unknown_profile_lists_the_allowed_ones():
    with pytest.raises(ConfigError, match="'smoke', 'cpu', 'paper'"):
        balanced_softmax.make_config("laptop")


def test_check_seeds_accepts_ranges():
    assert check_seeds(range(3)) == (0, 1, 2)
