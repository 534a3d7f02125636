"""Typed, validated experiment configurations and the profiles they are built from.

A chapter's ``Config`` is a frozen dataclass derived from :class:`BaseConfig`. It is built from a
named profile (``smoke`` / ``cpu`` / ``paper``) plus explicit overrides by :func:`make_config`, and
every value is checked before any work starts: a bad value raises :class:`ConfigError` whose message
names the parameter and the allowed values.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

PROFILE_NAMES: tuple[str, ...] = ("smoke", "cpu", "paper")


class ConfigError(ValueError):
    """An invalid parameter; the message names the parameter and what is allowed."""


def check_choice(name: str, value: Any, allowed: Iterable[Any]) -> None:
    """Raise unless ``value`` is one of ``allowed``."""
    allowed = tuple(allowed)
    if value not in allowed:
        raise ConfigError(
            f"{name}={value!r} is not allowed; choose one of: {', '.join(map(repr, allowed))}"
        )


def check_subset(name: str, values: Iterable[Any], allowed: Iterable[Any]) -> None:
    """Raise unless ``values`` is a non-empty collection whose items are all in ``allowed``."""
    values, allowed = tuple(values), tuple(allowed)
    if not values:
        raise ConfigError(f"{name} is empty; give at least one of: {', '.join(map(repr, allowed))}")
    for value in values:
        check_choice(f"{name} item", value, allowed)


def check_positive(name: str, value: Any, allow_zero: bool = False) -> None:
    """Raise unless ``value`` is a real number > 0 (or >= 0 with ``allow_zero``)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{name}={value!r} must be a number")
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"{name}={value!r} is not allowed; it must be {bound}")


def check_int(name: str, value: Any, minimum: int = 1) -> None:
    """Raise unless ``value`` is an integer >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name}={value!r} must be an integer >= {minimum}")
    if value < minimum:
        raise ConfigError(f"{name}={value!r} is not allowed; it must be an integer >= {minimum}")


def check_in_range(name: str, value: Any, low: float, high: float) -> None:
    """Raise unless ``low <= value <= high``."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{name}={value!r} must be a number in [{low}, {high}]")
    if not low <= value <= high:
        raise ConfigError(f"{name}={value!r} is not allowed; it must lie in [{low}, {high}]")


def check_seeds(seeds: Any) -> tuple[int, ...]:
    """Validate a seed list and return it as a tuple of distinct non-negative integers."""
    if isinstance(seeds, int | str) or not isinstance(seeds, Iterable):
        raise ConfigError(
            f"seeds={seeds!r} must be a list of non-negative integers, e.g. [0, 1, 2]"
        )
    seeds = tuple(seeds)
    if not seeds:
        raise ConfigError("seeds=[] is empty; give at least one non-negative integer seed")
    for seed in seeds:
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ConfigError(f"seeds contains {seed!r}; every seed must be an integer >= 0")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"seeds={list(seeds)!r} has duplicates; every seed must be distinct")
    return seeds


def check_device(device: Any) -> None:
    """Raise unless ``device`` names a device kind this library supports (availability is checked
    later by :func:`softmax_repro.engine.training.resolve_device`)."""
    if not isinstance(device, str) or not (
        device in ("auto", "cpu", "cuda") or (device.startswith("cuda:") and device[5:].isdigit())
    ):
        raise ConfigError(
            f"device={device!r} is not allowed; choose 'auto', 'cpu', 'cuda' or 'cuda:N'"
        )


@dataclasses.dataclass(frozen=True)
class BaseConfig:
    """Fields every chapter's config has.

    Attributes:
        profile: ``smoke`` (tests, seconds), ``cpu`` (the book, minutes) or ``paper`` (GPU).
        seeds: the seeds every compared number is averaged over.
        device: ``auto`` (CUDA when present), ``cpu``, ``cuda`` or ``cuda:N``.
    """

    profile: str
    seeds: tuple[int, ...]
    device: str = "auto"

    def __post_init__(self) -> None:
        check_choice("profile", self.profile, PROFILE_NAMES)
        object.__setattr__(self, "seeds", check_seeds(self.seeds))
        check_device(self.device)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of every field (tuples become lists)."""
        return _jsonable(dataclasses.asdict(self))


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def _freeze(value: Any) -> Any:
    """Lists from YAML/JSON become tuples so that frozen configs stay hashable."""
    if isinstance(value, list | tuple):
        return tuple(_freeze(v) for v in value)
    return value


C = TypeVar("C", bound=BaseConfig)


def make_config(
    cls: type[C],
    profiles: Mapping[str, Mapping[str, Any]],
    profile: str = "cpu",
    seeds: Iterable[int] | None = None,
    device: str = "auto",
    overrides: Mapping[str, Any] | None = None,
) -> C:
    """Build a validated ``cls`` from ``profiles[profile]`` plus explicit overrides.

    Args:
        cls: the chapter's Config dataclass.
        profiles: ``{"smoke": {...}, "cpu": {...}, "paper": {...}}``; each maps field names to
            values
            and must include ``seeds``.
        profile: which profile to start from.
        seeds: replaces the profile's seeds when given.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        overrides: any other Config fields to replace.

    Raises:
        ConfigError: unknown profile, unknown override key or an invalid value.
    """
    check_choice("profile", profile, tuple(profiles))
    overrides = dict(overrides or {})
    field_names = {f.name for f in dataclasses.fields(cls)}
    settable = sorted(field_names - {"profile", "device"})
    for key in overrides:
        if key in ("profile", "device"):
            raise ConfigError(f"overrides[{key!r}] is not allowed; pass {key} as its own parameter")
        if key not in field_names:
            raise ConfigError(
                f"overrides has unknown key {key!r}; allowed keys: {', '.join(settable)}"
            )
    values: dict[str, Any] = dict(profiles[profile])
    values.update(overrides)
    if seeds is not None:
        values["seeds"] = seeds
    values = {k: _freeze(v) for k, v in values.items()}
    return cls(profile=profile, device=device, **values)


def config_factory(
    cls: type[C], profiles: Mapping[str, Mapping[str, Any]]
) -> Callable[..., C]:
    """A chapter's ``make_config(profile="cpu", seeds=None, device="auto", overrides=None)``:
    :func:`make_config` bound to the chapter's Config class and profiles."""

    def make(
        profile: str = "cpu",
        seeds: Iterable[int] | None = None,
        device: str = "auto",
        overrides: Mapping[str, Any] | None = None,
    ) -> C:
        return make_config(cls, profiles, profile, seeds, device, overrides)

    make.__doc__ = f"A validated :class:`{cls.__name__}` from a profile plus overrides."
    return make
