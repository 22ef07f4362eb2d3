"""Typed configs from YAML plus key=value overrides."""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import pytest

from rlxf.config import ConfigError, describe, load_config, option, parse_overrides, to_yaml


@dataclass
class Inner:
    lr: float = option(1e-5, help="learning rate")
    schedule: Literal["constant", "linear", "cosine"] = option("linear", help="LR schedule")


@dataclass
class Outer:
    name: str = option("run", help="a name")
    steps: int = option(10, help="steps")
    use_lora: bool = option(False, help="flag")
    stop: list[str] = option(default_factory=list, help="stop strings")
    seed: int | None = option(None, help="seed")
    optim: Inner = field(default_factory=Inner)

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")


def test_defaults_yaml_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("steps: 20\noptim:\n  lr: 3.0e-4\n  schedule: cosine\n")
    cfg = load_config(Outer, path, ["optim.lr=0.001", "stop=Human:", "seed=7"])
    assert cfg.steps == 20
    assert cfg.optim.lr == pytest.approx(0.001)
    assert cfg.optim.schedule == "cosine"
    assert cfg.stop == ["Human:"]
    assert cfg.seed == 7
    assert cfg.name == "run"


def test_unknown_key_suggests_the_nearest(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown config key stpes .*Did you mean steps\?"):
        load_config(Outer, None, ["stpes=3"])
    with pytest.raises(ConfigError, match=r"unknown config key optim.lrr .*Did you mean optim.lr\?"):
        load_config(Outer, None, ["optim.lrr=3"])
    # A nested key given at the top level: the full dotted name is suggested.
    with pytest.raises(ConfigError, match=r"Did you mean optim.schedule\?"):
        load_config(Outer, None, ["schedule=cosine"])
    path = tmp_path / "bad.yaml"
    path.write_text("optim:\n  lr: 1\n  shedule: linear\n")
    with pytest.raises(ConfigError, match=rf"optim.shedule.*Did you mean optim.schedule\?.*{path.name}"):
        load_config(Outer, path)


def test_type_errors_name_the_key():
    with pytest.raises(ConfigError, match="steps: expected an integer, got 'many'"):
        load_config(Outer, None, ["steps=many"])
    with pytest.raises(ConfigError, match="use_lora: expected true or false"):
        load_config(Outer, None, ["use_lora=3"])
    with pytest.raises(ConfigError, match=r"optim.schedule: 'cosin' is not one of .*Did you mean 'cosine'\?"):
        load_config(Outer, None, ["optim.schedule=cosin"])
    with pytest.raises(ConfigError, match="optim: expected a mapping"):
        load_config(Outer, None, {"optim": 3})


def test_post_init_checks_run_at_load():
    with pytest.raises(ConfigError, match="steps must be >= 1, got 0"):
        load_config(Outer, None, ["steps=0"])


def test_int_is_accepted_for_float_and_strings_stay_strings():
    cfg = load_config(Outer, None, ["optim.lr=1", "name=1984"])
    assert isinstance(cfg.optim.lr, float) and cfg.optim.lr == 1.0
    assert cfg.name == "1984"


def test_overrides_need_key_value():
    with pytest.raises(ConfigError, match="not of the form key=value"):
        parse_overrides(["steps"])


def test_missing_and_broken_yaml_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(Outer, tmp_path / "nope.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("steps: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(Outer, broken)


def test_yaml_round_trip_and_describe(tmp_path):
    cfg = load_config(Outer, None, ["optim.lr=0.5", "stop=[a, b]"])
    path = tmp_path / "saved.yaml"
    path.write_text(to_yaml(cfg))
    assert load_config(Outer, path) == cfg
    rows = {key: (type_name, default, help_text) for key, type_name, default, help_text in describe(Outer)}
    assert rows["optim.schedule"] == ("'constant' | 'linear' | 'cosine'", "linear", "LR schedule")
    assert rows["seed"][0] == "int | null"


@dataclass
class WithCustomDefaults:
    optim: Inner = field(default_factory=lambda: Inner(lr=0.5, schedule="cosine"))


def test_partial_section_keeps_the_declared_default_of_the_other_keys():
    cfg = load_config(WithCustomDefaults, None, ["optim.schedule=constant"])
    assert cfg.optim.lr == 0.5  # the field's default, not Inner's own 1e-5
    assert cfg.optim.schedule == "constant"


def test_exponent_without_a_dot_is_a_number(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  lr: 1e-5\n")
    assert load_config(Outer, path).optim.lr == 1e-5
    assert load_config(Outer, None, ["optim.lr=3e-4"]).optim.lr == 3e-4
    with pytest.raises(ConfigError, match="optim.lr: expected a number"):
        load_config(Outer, None, ["optim.lr=fast"])


def _steps_to_share(cfg: Renamed, count: Any) -> float:
    if not isinstance(count, int) or count > cfg.steps:
        raise ValueError(f"expected a count <= steps ({cfg.steps}), got {count!r}")
    return count / cfg.steps


@dataclass
class Renamed:
    steps: int = option(10, help="steps")
    share: float = option(0.0, help="a share of the steps")
    optim: Inner = field(default_factory=lambda: Inner(lr=0.5))

    renamed_keys: ClassVar[dict[str, str]] = {"lr": "optim.lr", "count": "share"}
    renamed_conversions: ClassVar[dict[str, Any]] = {"count": _steps_to_share}


def test_renamed_key_still_works_with_a_deprecation_message(caplog):
    with caplog.at_level(logging.WARNING, logger="rlxf"):
        with pytest.warns(DeprecationWarning, match=r"Renamed: `lr` is deprecated .*write `optim.lr`"):
            cfg = load_config(Renamed, None, ["lr=0.25", "optim.schedule=cosine"])
    assert cfg.optim.lr == 0.25 and cfg.optim.schedule == "cosine"
    assert "`lr` is deprecated and will be removed in the next release" in caplog.text
    # Inside a section, the message names the full dotted keys.
    with pytest.warns(DeprecationWarning, match=r"`inner.lr` is deprecated .*write `inner.optim.lr`"):
        nested = load_config(HoldsRenamed, None, ["inner.lr=0.75"])
    assert nested.inner.optim.lr == 0.75


def test_renamed_key_converted_from_the_built_config():
    with pytest.warns(DeprecationWarning, match=r"`count` is deprecated.*write `share` \(here share=0.25\)"):
        cfg = load_config(Renamed, None, ["count=5", "steps=20"])
    assert cfg.share == 0.25 and cfg.steps == 20
    with pytest.raises(ConfigError, match=r"count: expected a count <= steps \(10\), got 11"):
        load_config(Renamed, None, ["count=11"])


def test_old_and_new_key_together_is_an_error():
    with pytest.raises(ConfigError, match="lr and optim.lr are both given"):
        load_config(Renamed, None, ["lr=0.25", "optim.lr=0.5"])
    with pytest.raises(ConfigError, match="count and share are both given"):
        load_config(Renamed, None, ["count=1", "share=0.5"])


def test_new_keys_and_typos_are_unaffected():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no deprecation message for the new names
        cfg = load_config(Renamed, None, ["optim.lr=0.125", "share=0.5"])
    assert cfg.optim.lr == 0.125 and cfg.share == 0.5 and cfg.optim.schedule == "linear"
    assert load_config(Renamed).optim.lr == 0.5  # the declared default, untouched
    with (
        pytest.warns(DeprecationWarning),
        pytest.raises(ConfigError, match=r"key stpes .*Did you mean steps\?"),
    ):
        load_config(Renamed, None, ["stpes=3", "lr=0.25"])  # beside an old key, a typo is still named


@dataclass
class HoldsRenamed:
    inner: Renamed = field(default_factory=Renamed)
