"""One way to read configs: field types from the dataclasses, rules in ``__post_init__``, the
source and key named in every error, and command-line options that leave defaults to the
library."""

from __future__ import annotations

import argparse
import inspect
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest

from sane.cli import build_parser, main
from sane.errors import ConfigError
from sane.model.sane import SANEConfig
from sane.settings import field_types, from_table, given, require
from sane.train import PretrainConfig, load_pretrain_config
from sane.zoo.architectures import ArchConfig
from sane.zoo.config import SearchSpace, load_config


@dataclass(frozen=True)
class Inner:
    size: int = 1

    def __post_init__(self) -> None:
        require(self.size >= 1, "size", "positive", self.size)


@dataclass(frozen=True)
class Example:
    count: int = 1
    rate: float = 0.5
    flag: bool = False
    name: str = "a"
    limit: int | None = None
    values: tuple[float, ...] = (1.0,)
    pair: tuple[int, int] = (0, 1)
    triple: tuple[int, int, int] = (1, 2, 3)
    extra: Mapping[str, Any] = field(default_factory=dict)
    inner: Inner = field(default_factory=Inner)

    def __post_init__(self) -> None:
        require(self.rate <= 1, "rate", "at most 1", self.rate)


@dataclass(frozen=True)
class Required:
    size: int
    label: str = "x"


# -- derived field types -----------------------------------------------------------------------

def test_field_types_come_from_the_annotations():
    assert field_types(PretrainConfig)["windows_per_checkpoint"] == int | None
    assert field_types(SANEConfig)["max_positions"] == tuple[int, int, int]
    assert field_types(Example)["inner"] is Inner


def test_accepted_values_are_converted():
    table = {"count": 3, "rate": 1, "flag": True, "name": "b", "limit": 7, "values": [1, 2.5],
             "pair": [4, 5], "triple": (0, 0, 0), "extra": {"x": [1]}, "inner": {"size": 2}}
    config = from_table(Example, table, "t.toml")
    assert config == Example(count=3, rate=1.0, flag=True, name="b", limit=7, values=(1.0, 2.5),
                             pair=(4, 5), triple=(0, 0, 0), extra={"x": [1]}, inner=Inner(2))
    assert type(config.rate) is float and type(config.values[0]) is float
    assert type(config.values) is tuple and type(config.extra) is dict
    assert from_table(Example, {"limit": None}, "t.toml").limit is None


def test_an_instance_keeps_the_values_the_table_leaves_out():
    base = Example(count=5, inner=Inner(4))
    config = from_table(base, {"rate": 0.25, "inner": {}}, "t.toml")
    assert config == Example(count=5, rate=0.25, inner=Inner(4))
    assert from_table(Example, {}, "t.toml") == Example()


@pytest.mark.parametrize(("key", "value", "message"), [
    ("count", True, "t.toml: count: expected an integer, got True"),
    ("count", 1.0, "t.toml: count: expected an integer, got 1.0"),
    ("count", None, "t.toml: count: expected an integer, got None"),
    ("rate", "high", "t.toml: rate: expected a number, got 'high'"),
    ("rate", False, "t.toml: rate: expected a number, got False"),
    ("rate", math.inf, "t.toml: rate: expected a finite number, got inf"),
    ("rate", math.nan, "t.toml: rate: expected a finite number, got nan"),
    ("flag", 1, "t.toml: flag: expected true or false, got 1"),
    ("name", 3, "t.toml: name: expected a string, got 3"),
    ("limit", "3", "t.toml: limit: expected an integer, got '3'"),
    ("values", 0.5, "t.toml: values: expected a list, got 0.5"),
    ("values", [], "t.toml: values: expected a non-empty list, got []"),
    ("values", [1, "x"], "t.toml: values[1]: expected a number, got 'x'"),
    ("pair", [1, 2, 3], "t.toml: pair: expected a list of 2 values, got [1, 2, 3]"),
    ("triple", [1, 2.5, 3], "t.toml: triple[1]: expected an integer, got 2.5"),
    ("extra", [1], "t.toml: extra: expected a table, got [1]"),
    ("inner", 3, "t.toml: inner: expected a table of settings, got 3"),
    ("inner", {"size": "big"}, "t.toml: inner.size: expected an integer, got 'big'"),
    ("inner", {"sise": 2}, "t.toml: unknown key 'sise' in [inner]; known: size"),
])
def test_refused_values_name_the_source_and_key(key, value, message):
    with pytest.raises(ConfigError) as error:
        from_table(Example, {key: value}, "t.toml")
    assert str(error.value) == message


def test_unknown_missing_and_untabled():
    with pytest.raises(ConfigError) as error:
        from_table(Example, {"cont": 1}, "t.toml")
    assert str(error.value) == ("t.toml: unknown key 'cont'; known: count, extra, flag, inner, "
                                "limit, name, pair, rate, triple, values")
    with pytest.raises(ConfigError) as error:
        from_table(Required, {"label": "y"}, "m.json")
    assert str(error.value) == "m.json: missing key 'size'"
    assert from_table(Required, {"size": 2}, "m.json") == Required(2)
    with pytest.raises(ConfigError) as error:
        from_table(Example, [("count", 1)], "t.toml")
    assert str(error.value) == "t.toml: expected a table of settings, got [('count', 1)]"


def test_unsupported_field_types_are_a_programming_error():
    @dataclass(frozen=True)
    class Loose:
        items: list = field(default_factory=list)

    with pytest.raises(TypeError, match="not supported"):
        from_table(Loose, {"items": [1]}, "t.toml")


# -- __post_init__ rules, prefixed with the source and the key path ----------------------------

def test_post_init_errors_get_the_source_and_key_path():
    with pytest.raises(ConfigError) as error:
        from_table(Example, {"rate": 2}, "t.toml")
    assert str(error.value) == "t.toml: rate must be at most 1, got 2.0"
    with pytest.raises(ConfigError) as error:
        from_table(Example, {"inner": {"size": 0}}, "t.toml")
    assert str(error.value) == "t.toml: inner.size must be positive, got 0"
    with pytest.raises(ConfigError) as error:  # the rule holds for code too, unprefixed
        Inner(0)
    assert str(error.value) == "size must be positive, got 0"


def test_population_config_names_file_and_key(tmp_path):
    file = tmp_path / "fmnist.toml"
    file.write_text("[space]\nlr = [1e-3, -1.0]\n")
    with pytest.raises(ConfigError) as error:
        load_config(file)
    assert str(error.value) == f"{file}: space.lr must be positive values, got -1.0"
    file.write_text("[dataset]\nval_fraction = 1\n")
    with pytest.raises(ConfigError) as error:
        load_config(file)
    assert str(error.value) == f"{file}: dataset.val_fraction must be in (0, 1), got 1.0"
    with pytest.raises(ConfigError) as error:
        load_config("digits-cnn-s", epochs=0)
    assert str(error.value) == "preset 'digits-cnn-s': epochs must be positive, got 0"


def test_pretrain_and_model_configs_use_the_same_mechanism(tmp_path):
    with pytest.raises(ConfigError) as error:
        load_pretrain_config(gamma=1.5)
    assert str(error.value) == "pretrain config: gamma must be in [0, 1], got 1.5"
    file = tmp_path / "p.toml"
    file.write_text("permute = 1\n")
    with pytest.raises(ConfigError) as error:
        load_pretrain_config(file)
    assert str(error.value) == f"{file}: permute: expected true or false, got 1"
    file.write_text("model = 3\n")
    with pytest.raises(ConfigError) as error:
        load_pretrain_config(file)
    assert str(error.value) == f"{file}: model: expected a table, got 3"
    config = SANEConfig.from_dict({"token_size": 7, "max_positions": [4, 3, 2]}, "sane.json")
    assert config == SANEConfig(token_size=7, max_positions=(4, 3, 2))
    with pytest.raises(ConfigError) as error:
        SANEConfig.from_dict({"token_size": 7, "max_positions": [4, 3, 2], "d_model": 30},
                             "sane.json")
    assert str(error.value) == ("sane.json: d_model must be even and divisible by n_heads (4), "
                                "got 30")
    with pytest.raises(ConfigError) as error:
        SANEConfig.from_dict({"token_size": 7.0, "max_positions": [4, 3, 2]}, "sane.json")
    assert str(error.value) == "sane.json: token_size: expected an integer, got 7.0"


def test_architecture_rules_are_written_once():
    with pytest.raises(ConfigError) as direct:
        ArchConfig(activation="swish")
    with pytest.raises(ConfigError) as space:
        SearchSpace(activation=("tanh", "swish"))
    assert str(direct.value) == str(space.value)
    assert str(direct.value).startswith("activation must be one of [")
    with pytest.raises(ConfigError) as error:
        ArchConfig.from_dict({"name": "mlp", "hidden": [8, 0]})
    assert str(error.value) == "architecture: hidden must be positive sizes, got [8, 0]"
    with pytest.raises(ConfigError) as error:
        ArchConfig.from_dict({"dropout": 1})
    assert str(error.value) == "architecture: dropout must be in [0, 1), got 1.0"


# -- the command line leaves defaults to the library --------------------------------------------

class Called(Exception):
    """Raised by a stand-in for a library function, after recording what it was given."""


def record(calls: list):
    def stand_in(*args: Any, **kwargs: Any) -> Any:
        calls.append((args, kwargs))
        raise Called

    return stand_in


def test_given_keeps_values_that_are_not_none():
    assert given(a=None, b=0, c=False, d="") == {"b": 0, "c": False, "d": ""}


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return action.choices


def _commands() -> dict[str, argparse.ArgumentParser]:
    top = _subparsers(build_parser())
    commands = {name: top[name] for name in
                ("prepare", "pretrain", "probe", "finetune", "sample", "analyze")}
    for group, names in (("zoo", ("train", "import")), ("data", ("info",))):
        commands |= {f"{group} {name}": _subparsers(top[group])[name] for name in names}
    return commands


def test_library_options_default_to_none():
    for name, parser in _commands().items():
        for action in parser._actions:
            if action.option_strings and action.dest not in ("help", "out"):
                assert action.default is None, f"sane {name} {action.option_strings[0]}"


def test_help_states_the_library_defaults():
    from sane.data import load_dataset
    from sane.downstream.sampling import SamplingConfig
    from sane.stages.finetune import finetune_samples
    from sane.stages.sample import sample_from_run
    from sane.weights.store import StoreSettings
    from sane.zoo.modelzoos.reader import DEFAULT_MAX_ABS, import_modelzoos

    def default(fn, name):
        return inspect.signature(fn).parameters[name].default

    expected = {
        ("pretrain", "epochs"): PretrainConfig.epochs,
        ("pretrain", "batch_size"): PretrainConfig.batch_size,
        ("pretrain", "lr"): PretrainConfig.lr, ("pretrain", "seed"): PretrainConfig.seed,
        ("sample", "samples"): SamplingConfig.samples, ("sample", "keep"): SamplingConfig.keep,
        ("sample", "rounds"): SamplingConfig.rounds, ("sample", "seed"): SamplingConfig.seed,
        ("sample", "bandwidth"): SamplingConfig.bandwidth,
        ("sample", "prompts"): default(sample_from_run, "prompts"),
        ("finetune", "epochs"): default(finetune_samples, "epochs"),
        ("finetune", "lr"): default(finetune_samples, "lr"),
        ("finetune", "batch_size"): default(finetune_samples, "batch_size"),
        ("finetune", "seed"): default(finetune_samples, "seed"),
        ("prepare", "seed"): StoreSettings.seed,
        ("zoo import", "max_abs"): DEFAULT_MAX_ABS,
        ("zoo import", "split_seed"): default(import_modelzoos, "split_seed"),
        ("data info", "seed"): default(load_dataset, "seed"),
    }
    commands = _commands()
    for (name, dest), value in expected.items():
        (action,) = [a for a in commands[name]._actions if a.dest == dest]
        stated = re.search(r"default:? ([-+.\w]+)", action.help)
        assert stated and float(stated.group(1)) == value, f"sane {name} --{dest}: {action.help}"


def test_pretrain_options_left_out_take_the_library_defaults(monkeypatch, tmp_path):
    calls: list = []
    monkeypatch.setattr("sane.train.pretrain", record(calls))
    with pytest.raises(Called):
        main(["pretrain", str(tmp_path / "store"), "--out", str(tmp_path / "run")])
    with pytest.raises(Called):
        main(["pretrain", str(tmp_path / "store"), "--out", str(tmp_path / "run"), "--epochs",
              "3", "--lr", "0.01"])
    (first, second) = [args[2] for args, _ in calls]
    assert first == PretrainConfig()
    assert second == PretrainConfig(epochs=3, lr=0.01)


def test_sample_and_zoo_options_left_out_take_the_library_defaults(monkeypatch, tmp_path):
    from sane.downstream import sampling

    real, built = sampling.SamplingConfig, []

    def config(**kwargs: Any) -> None:
        built.append(real(**kwargs))
        raise Called

    monkeypatch.setattr(sampling, "SamplingConfig", config)
    with pytest.raises(Called):
        main(["sample", str(tmp_path / "run"), "--out", str(tmp_path / "s")])
    with pytest.raises(Called):
        main(["sample", str(tmp_path / "run"), "--out", str(tmp_path / "s"), "--keep", "3",
              "--absolute-bandwidth"])
    assert built == [real(), real(keep=3, relative=False)]

    calls: list = []
    monkeypatch.setattr("sane.zoo.config.load_config", record(calls))
    with pytest.raises(Called):
        main(["zoo", "train", "digits-cnn-s", "--out", str(tmp_path / "z")])
    with pytest.raises(Called):
        main(["zoo", "train", "digits-cnn-s", "--out", str(tmp_path / "z"), "--epochs", "2"])
    assert [kwargs for _, kwargs in calls] == [{}, {"epochs": 2}]
