"""Population configs: presets, TOML files and overrides, their errors, the enumeration of
models and their planning into groups."""

import dataclasses
import json

import pytest

from sane.cli import main
from sane.errors import ConfigError
from sane.zoo.config import (
    PRESETS,
    PopulationConfig,
    SearchSpace,
    config_from_dict,
    enumerate_models,
    load_config,
)
from sane.zoo.generate import plan_groups


def test_presets_exist_validate_and_describe_themselves():
    required = {"digits-cnn-s", "fmnist-cnn-s-seed", "fmnist-cnn-s-hyp", "mnist-cnn-s-seed",
                "mnist-cnn-s-hyp", "svhn-cnn-s-seed", "cifar10-cnn-l-seed", "mnist1d-cnn1d"}
    assert required <= set(PRESETS)
    for name, preset in PRESETS.items():
        assert preset.description
        assert load_config(name) == preset.config
        # The resolved config survives the JSON round trip of the manifest.
        stored = json.loads(json.dumps(preset.config.to_dict()))
        assert config_from_dict(stored) == preset.config


def test_model_zoos_recipes():
    seed = load_config("fmnist-cnn-s-seed")
    assert seed.dataset.name == "fashion-mnist" and seed.epochs == 50
    assert seed.num_models == 1000 and seed.space.seed_range == (1, 1000)
    assert seed.space.lr == (3e-4,) and seed.space.batch_size == (10,)
    hyp = load_config("fmnist-cnn-s-hyp")
    assert hyp.num_models == 4 * 2 * 4 * 2 * 2 * 2 * 10
    assert set(hyp.space.activation) == {"tanh", "relu", "sigmoid", "gelu"}
    assert load_config("cifar10-cnn-l-seed").architecture.name == "cnn_l"


def test_toml_with_preset_and_overrides(tmp_path):
    file = tmp_path / "c.toml"
    file.write_text('preset = "fmnist-cnn-s-hyp"\nepochs = 7\n[dataset]\ntrain_size = 500\n'
                    '[space]\nlr = [0.1]\n')
    config = load_config(file, models=12, epochs=4)
    assert config.epochs == 4 and config.models == 12
    assert config.dataset.train_size == 500 and config.dataset.name == "fashion-mnist"
    assert config.space.lr == (0.1,) and config.space.dropout == (0.0, 0.5)
    assert load_config("digits-cnn-s", train_size=99).dataset.train_size == 99


@pytest.mark.parametrize(("text", "message"), [
    ("epoch = 3", r"c.toml: unknown key 'epoch'"),
    ("[dataset]\ntrain_sise = 3", r"c.toml: unknown key 'train_sise' in \[dataset\]"),
    ("[space]\nlr = 0.1", r"c.toml: space.lr: expected a list, got 0.1"),
    ("[space]\nlr = []", r"space.lr: expected a non-empty list"),
    ("[space]\nbatch_size = [1.5]", r"batch_size\[0\]: expected an integer"),
    ("[space]\nseed_range = [1, 2, 3]", r"seed_range: expected a list of 2 values"),
    ("[space]\noptimizer = ['adamw']", r"space.optimizer must be one of \['adam', 'sgd'\]"),
    ("[space]\nlr = [-1.0]", r"c.toml: space.lr must be positive values, got -1.0"),
    ("[space]\nactivation = ['tanh', 'tanh']", r"space.activation must be a list without"),
    ("[architecture]\nactivation = 'relu'", r"architecture.activation: set it in \[space\]"),
    ("[architecture]\nname = 'vgg'", r"architecture.name must be one of"),
    ("models = 2", r"models must be between 1 and the 1 recipes"),
    ("epochs = 0", r"epochs must be positive"),
    ("split = [0.5, 0.5, 0.5]", r"split must be three non-negative fractions"),
    ("preset = 'nope'", r"unknown preset 'nope'"),
    ("epochs = ", r"not valid TOML"),
])
def test_bad_toml_names_file_and_key(tmp_path, text, message):
    file = tmp_path / "c.toml"
    file.write_text(text + "\n")
    with pytest.raises(ConfigError, match=message):
        load_config(file)


def test_unknown_source_and_override():
    with pytest.raises(ConfigError, match="neither a TOML file nor a preset"):
        load_config("no-such-preset")
    with pytest.raises(ConfigError, match="unknown key 'learning_rate'"):
        load_config("digits-cnn-s", learning_rate=3)


def test_cli_presets_and_errors(capsys, tmp_path):
    assert main(["zoo", "presets"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in PRESETS)
    assert main(["zoo", "train", "no-such-preset", "--out", str(tmp_path / "z")]) == 2
    assert "neither a TOML file nor a preset" in capsys.readouterr().err
    assert main(["zoo", "train", "digits-cnn-s", "--epochs", "0",
                 "--out", str(tmp_path / "z")]) == 2
    assert "epochs must be positive" in capsys.readouterr().err


def test_grid_enumerates_every_recipe_seed_fastest():
    space = SearchSpace(seed_range=(5, 7), activation=("tanh", "relu"), lr=(0.1, 0.01))
    entries = enumerate_models(PopulationConfig(space=space, epochs=2))
    assert [e.id for e in entries] == [f"m{i:04d}" for i in range(12)]
    recipes = [(e.seed, e.architecture.activation, e.training["lr"]) for e in entries]
    assert recipes[:4] == [(5, "tanh", 0.1), (6, "tanh", 0.1), (7, "tanh", 0.1),
                           (5, "relu", 0.1)]
    assert len(set(recipes)) == 12
    assert entries[0].training == {"optimizer": "adam", "lr": 0.1, "weight_decay": 0.0,
                                   "batch_size": 10, "epochs": 2}
    first = enumerate_models(PopulationConfig(space=space, models=4, epochs=2))
    assert [e.to_dict() for e in first] == [e.to_dict() for e in entries[:4]]


def test_random_draws_distinct_recipes_reproducibly():
    config = load_config("fmnist-cnn-s-hyp", models=100)
    entries = enumerate_models(config)
    recipe = [(e.seed, e.architecture, tuple(sorted(e.training.items()))) for e in entries]
    assert len(set(recipe)) == 100
    assert [e.to_dict() for e in enumerate_models(config)] == [e.to_dict() for e in entries]
    other = enumerate_models(dataclasses.replace(config, sample_seed=1))
    assert [e.to_dict() for e in other] != [e.to_dict() for e in entries]
    # A hundred draws cover every value of every hyperparameter.
    assert {e.architecture.activation for e in entries} == set(config.space.activation)
    assert {e.training["optimizer"] for e in entries} == {"adam", "sgd"}
    assert all(("momentum" in e.training) == (e.training["optimizer"] == "sgd")
               for e in entries)


def test_groups_are_compatible_balanced_and_ordered_by_optimizer():
    entries = enumerate_models(load_config("fmnist-cnn-s-hyp", models=200))
    groups = plan_groups(entries, lambda batch_size: 32)
    assert sorted(e.id for g in groups for e in g) == sorted(e.id for e in entries)
    for group in groups:
        assert len(group) <= 32
        assert len({e.architecture.activation for e in group}) == 1
        kinds = [e.training["optimizer"] for e in group]
        assert kinds == sorted(kinds)
    by_activation = {}
    for group in groups:
        by_activation.setdefault(group[0].architecture.activation, []).append(len(group))
    for sizes in by_activation.values():  # near-equal parts of each compatible set
        assert max(sizes) - min(sizes) <= 1
