"""Population training: configs, enumeration, the batched engine, zoo records, exact resume."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from sane.cli import main
from sane.data import load_dataset
from sane.errors import ConfigError, FormatError
from sane.zoo.architectures import ArchConfig, build_model
from sane.zoo.config import (
    PRESETS,
    DataConfig,
    PopulationConfig,
    SearchSpace,
    config_from_dict,
    enumerate_models,
    load_config,
)
from sane.zoo.population import (
    DROPOUT_STREAM,
    SingleNet,
    StackedNet,
    StackedOptimizer,
    data_order,
    evaluate,
    model_layout,
    per_model_batch,
    stream_seed,
)
from sane.zoo.storage import METRIC_KEYS, Zoo
from sane.zoo.train import plan_groups, train_population

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")

# Four digit models in two groups (tanh, relu), Adam and SGD mixed inside each group, dropout
# in some: small enough for seconds, varied enough to cross every code path.
TINY_TOML = """
epochs = 3
workers = 1
threads = 1

[dataset]
name = "digits"
train_size = 200

[space]
seed_range = [1, 2]
activation = ["tanh", "relu"]
init = ["kaiming_uniform"]
optimizer = ["adam", "sgd"]
dropout = [0.0, 0.3]
lr = [0.01]
batch_size = [16]
"""


def tiny_config(tmp_path: Path, **overrides) -> PopulationConfig:
    file = tmp_path / "tiny.toml"
    file.write_text(TINY_TOML)
    # 2 seeds x 2 activations x 2 optimizers x 2 dropouts = 16 recipes; keep a random 6.
    return load_config(file, mode="random", models=6, **overrides)


def assert_close_to_rounding(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Equal up to float32 rounding relative to the largest value (logits can be large)."""
    actual, expected = actual.detach(), expected.detach()
    torch.testing.assert_close(actual, expected, rtol=1e-4,
                               atol=1e-5 * float(expected.abs().max()))


def checkpoints(zoo_dir: Path) -> dict[str, bytes]:
    models = zoo_dir / "models"
    return {str(f.relative_to(models)): f.read_bytes()
            for f in sorted(models.rglob("epoch_*.safetensors"))}


# -- configs -------------------------------------------------------------------------------

def crash_training(config: PopulationConfig, out: Path, monkeypatch, after: int) -> None:
    """Train ``config`` into ``out`` and crash inside the ``after``-th ``Zoo.write_epoch``
    call (after the resume state, before the checkpoint), as a killed run would."""
    original = Zoo.write_epoch
    calls = []

    def crashing(self, *args, **kwargs):
        calls.append(args[:2])
        if len(calls) == after:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Zoo, "write_epoch", crashing)
    with pytest.raises(KeyboardInterrupt):
        train_population(config, out, progress=False)
    monkeypatch.setattr(Zoo, "write_epoch", original)


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
    ("[dataset]\ntrain_sise = 3", r"\[dataset\]: unknown key 'train_sise'"),
    ("[space]\nlr = 0.1", r"\[space\] lr: expected a list"),
    ("[space]\nlr = []", r"\[space\] lr: expected a non-empty list"),
    ("[space]\nbatch_size = [1.5]", r"batch_size\[0\]: expected an integer"),
    ("[space]\nseed_range = [1, 2, 3]", r"seed_range: expected a list of 2 values"),
    ("[space]\noptimizer = ['adamw']", r"space.optimizer must be from \['adam', 'sgd'\]"),
    ("[space]\nlr = [-1.0]", r"space.lr must be positive"),
    ("[space]\nactivation = ['tanh', 'tanh']", r"space.activation must be a list without"),
    ("[architecture]\nactivation = 'relu'", r"\[architecture\] activation: set it in \[space\]"),
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


# -- enumeration and groups ----------------------------------------------------------------

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


# -- the engine ----------------------------------------------------------------------------

@pytest.mark.parametrize("arch", [
    ArchConfig(),
    ArchConfig(name="cnn_l", in_channels=3, input_size=32, activation="gelu"),
    ArchConfig(name="mlp", activation="relu"),
    ArchConfig(name="cnn1d", input_size=40),
])
def test_stacked_net_computes_each_models_own_function(arch):
    archs = [dataclasses.replace(arch, dropout=p, init=init)
             for p, init in [(0.0, "kaiming_uniform"), (0.5, "kaiming_normal"), (0.0, "normal")]]
    models = [build_model(a, seed) for a, seed in zip(archs, (1, 2, 3))]
    for m in models:
        m.eval()
    net = StackedNet(models)
    side = (arch.input_size,) * (1 if arch.name == "cnn1d" else 2)
    x = torch.randn(12, arch.in_channels, *side, generator=torch.Generator().manual_seed(0))
    xm = model_layout(x)
    same = net.forward(per_model_batch(xm, torch.arange(12).expand(3, -1)))
    assert_close_to_rounding(same, torch.stack([m(x) for m in models]))
    # Every model its own images, as in training.
    index = torch.stack([torch.randperm(12, generator=torch.Generator().manual_seed(s))[:5]
                         for s in range(3)])
    own = net.forward(per_model_batch(xm, index))
    assert_close_to_rounding(own, torch.stack([m(x[i]) for m, i in zip(models, index)]))
    for state, model in zip(net.state_dicts(), models):
        assert list(state) == list(model.state_dict())
        assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_stacked_optimizer_matches_torch_adam_and_sgd():
    models = [build_model(ArchConfig(init="kaiming_uniform"), s) for s in range(4)]
    kinds, lrs, wds = ["adam", "adam", "sgd", "sgd"], [1e-3, 3e-4, 1e-2, 1e-3], [0, 1e-3, 1e-4, 0]
    net = StackedNet(models)
    ours = StackedOptimizer(net, kinds, lrs, wds, [0.0, 0.0, 0.9, 0.5])
    theirs = [
        torch.optim.Adam(m.parameters(), lr=lr, weight_decay=wd) if kind == "adam"
        else torch.optim.SGD(m.parameters(), lr=lr, momentum=mom, weight_decay=wd)
        for m, kind, lr, wd, mom in zip(models, kinds, lrs, wds, [0, 0, 0.9, 0.5])
    ]
    generator = torch.Generator().manual_seed(0)
    for _ in range(6):
        grads = [torch.randn(p.shape, generator=generator) for p in net.params]
        ours.step(grads)
        for k, (model, optimizer) in enumerate(zip(models, theirs)):
            for i, p in enumerate(model.parameters()):
                r = net.rows[i]
                p.grad = grads[i][k * r:(k + 1) * r].reshape(p.shape).clone()
            optimizer.step()
    for state, model in zip(net.state_dicts(), models):
        for key, value in model.state_dict().items():
            torch.testing.assert_close(state[key], value, rtol=1e-6, atol=1e-7)
    # The saved state restores the optimizer exactly.
    again = StackedOptimizer(net, kinds, lrs, wds, [0.0, 0.0, 0.9, 0.5])
    again.load_state_dicts(ours.state_dicts())
    assert again.step_count == 6
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
               for a, b in zip(again.state, ours.state) if a[0].numel())


def test_dropout_masks_belong_to_each_model_alone():
    arch = ArchConfig(dropout=0.5, init="kaiming_uniform")
    x = model_layout(torch.randn(8, 1, 28, 28, generator=torch.Generator().manual_seed(0)))

    def outputs(companions):
        models = [build_model(arch, 7), *(build_model(arch, s) for s in companions)]
        models.insert(1, build_model(dataclasses.replace(arch, dropout=0.0), 9))
        net = StackedNet(models)
        index = torch.arange(8).expand(len(models), 8)
        generators = [torch.Generator().manual_seed(stream_seed(s, DROPOUT_STREAM, 1)) for s in
                      [7, 9, *companions]]
        generators[1] = None
        train = net.forward(per_model_batch(x, index), dropout=generators)
        plain = net.forward(per_model_batch(x, index))
        return train, plain

    alone, alone_plain = outputs([])
    crowd, _ = outputs([1, 2, 3])
    torch.testing.assert_close(alone[0], crowd[0], rtol=1e-5, atol=1e-5)  # same mask
    assert not torch.allclose(alone[0], alone_plain[0])  # dropout did something
    torch.testing.assert_close(alone[1], alone_plain[1])  # p = 0: no dropout
    assert not torch.allclose(crowd[2], crowd[3])


def test_data_order_is_a_seeded_permutation_per_epoch():
    a, b = data_order(1, 1, 50), data_order(1, 2, 50)
    assert sorted(a.tolist()) == list(range(50))
    assert torch.equal(a, data_order(1, 1, 50)) and not torch.equal(a, b)
    assert not torch.equal(a, data_order(2, 1, 50))


# -- training into a zoo ---------------------------------------------------------------------

def test_zoo_records_every_epoch_and_its_config(tmp_path):
    config = tiny_config(tmp_path)
    zoo = train_population(config, tmp_path / "zoo", progress=False)
    assert len(zoo.models) == 6
    assert zoo.manifest["population"] == json.loads(json.dumps(config.to_dict()))
    assert zoo.dataset["examples"]["train"] == 200 and zoo.dataset["name"] == "digits"
    assert {k: len(v) for k, v in zoo.split.items()} == {"train": 4, "val": 1, "test": 1}
    for entry in zoo.models:
        rows = zoo.metrics(entry.id)
        assert [r["epoch"] for r in rows] == [0, 1, 2, 3]
        for row in rows:
            assert set(row) == {"epoch", "checkpoint", "ggap", *METRIC_KEYS}
            assert row["checkpoint"] is True
            assert row["ggap"] == pytest.approx(row["train_acc"] - row["test_acc"])
            assert all(0 <= row[k] <= 1 for k in ("train_acc", "val_acc", "test_acc"))
        state = zoo.load_checkpoint(entry.id, 3)
        own = build_model(entry.architecture).state_dict()  # with or without dropout modules
        assert {k: v.shape for k, v in state.items()} == {k: v.shape for k, v in own.items()}
        assert not list(zoo.model_dir(entry.id).glob("resume_*"))  # removed when finished
    # Epoch 0 is the initialization, evaluated.
    first = zoo.models[0]
    init = build_model(first.architecture, first.seed).state_dict()
    assert all(torch.equal(zoo.load_checkpoint(first.id, 0)[k], v) for k, v in init.items())


def test_epoch_zero_and_eval_train_metrics_are_evaluation_passes(tmp_path):
    config = tiny_config(tmp_path, train_metrics="eval", epochs=1)
    zoo = train_population(config, tmp_path / "zoo", progress=False)
    ds = load_dataset("digits", size=28)
    train = (model_layout(ds.train.x[:200]), ds.train.y[:200])
    for entry in zoo.models[:2]:
        for epoch in (0, 1):
            net = StackedNet([build_model(entry.architecture)])
            net.load_state_dicts([zoo.load_checkpoint(entry.id, epoch)])
            loss, acc = evaluate(net, *train)
            row = zoo.metrics(entry.id)[epoch]
            assert row["train_loss"] == pytest.approx(float(loss[0]), rel=1e-5)
            assert row["train_acc"] == pytest.approx(float(acc[0]))


def test_same_config_twice_gives_identical_checkpoints_with_any_number_of_workers(tmp_path):
    config = tiny_config(tmp_path)
    train_population(config, tmp_path / "a", progress=False)
    train_population(dataclasses.replace(config, workers=2), tmp_path / "b", progress=False)
    a, b = checkpoints(tmp_path / "a"), checkpoints(tmp_path / "b")
    assert len(a) == 6 * 4 and a == b
    rows = [Zoo.open(tmp_path / d).metrics("m0003") for d in ("a", "b")]
    assert rows[0] == rows[1]


def test_rerun_of_a_finished_zoo_changes_nothing_and_other_configs_are_refused(tmp_path):
    config = tiny_config(tmp_path)
    train_population(config, tmp_path / "zoo", progress=False)
    before = {f: f.stat().st_mtime_ns for f in (tmp_path / "zoo").rglob("*") if f.is_file()}
    train_population(config, tmp_path / "zoo", progress=False)
    after = {f: f.stat().st_mtime_ns for f in (tmp_path / "zoo").rglob("*") if f.is_file()}
    assert before == after
    with pytest.raises(ConfigError, match=r"differs in: epochs stored 3, requested 4\)"):
        train_population(dataclasses.replace(config, epochs=4), tmp_path / "zoo")


def test_crash_while_writing_an_epoch_resumes_to_identical_checkpoints(tmp_path, monkeypatch):
    config = tiny_config(tmp_path)
    train_population(config, tmp_path / "whole", progress=False)
    first_group = plan_groups(enumerate_models(config), config.models_per_group)[0]
    # Epochs 0 and 1 of the first group written, then epoch 2 of one model: the next crashes.
    crash_at = 2 * len(first_group) + 2
    crash_training(config, tmp_path / "resumed", monkeypatch, after=crash_at)
    partial = Zoo.open(tmp_path / "resumed")
    last = sorted(partial.last_epoch(e.id) for e in first_group)
    assert last == [1] * (len(first_group) - 1) + [2]  # killed halfway through the group
    train_population(config, tmp_path / "resumed", progress=False)
    assert checkpoints(tmp_path / "resumed") == checkpoints(tmp_path / "whole")
    assert not list((tmp_path / "resumed").rglob("resume_*"))


def test_an_error_in_a_worker_reaches_the_caller_as_the_same_error(tmp_path, monkeypatch):
    config = tiny_config(tmp_path)
    # Crash after epoch 0 and part of epoch 1 of the first group.
    crash_training(config, tmp_path / "zoo", monkeypatch, after=7)
    for file in (tmp_path / "zoo").rglob("resume_*.safetensors"):
        file.write_bytes(b"corrupt")
    with pytest.raises(FormatError, match="unreadable resume state"):
        train_population(dataclasses.replace(config, workers=2), tmp_path / "zoo",
                         progress=False)


def test_resume_state_round_trip_and_errors(tmp_path):
    entries = enumerate_models(PopulationConfig(space=SearchSpace(seed_range=(1, 3))))
    zoo = Zoo.create(tmp_path, entries, dataset={"name": "digits"})
    state = {"step": torch.tensor(7), "exp_avg.w": torch.randn(3, 2)}
    zoo.save_resume_state("m0001", 4, state, "adam")
    zoo.save_resume_state("m0001", 5, state, "adam")
    loaded = zoo.load_resume_state("m0001", 4, "adam")
    assert set(loaded) == set(state) and all(torch.equal(loaded[k], v) for k, v in state.items())
    assert zoo.resume_epochs("m0001") == [4, 5]
    with pytest.raises(FormatError, match="resume state is for 'adam', expected 'sgd'"):
        zoo.load_resume_state("m0001", 4, "sgd")
    with pytest.raises(FormatError, match=r"resume_003.safetensors: resume state not found"):
        zoo.load_resume_state("m0001", 3, "adam")
    zoo.remove_resume_state("m0001", keep=5)
    assert zoo.resume_epochs("m0001") == [5]
    zoo.remove_resume_state("m0001")
    assert zoo.resume_epochs("m0001") == []


@pytest.mark.slow
def test_sigkill_and_rerun_gives_the_checkpoints_of_an_uninterrupted_run(tmp_path):
    file = tmp_path / "tiny.toml"
    file.write_text('mode = "random"\n' + TINY_TOML.replace("workers = 1", "workers = 2"))
    args = ["zoo", "train", str(file), "--epochs", "6", "--models", "6", "--out"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    proc = subprocess.Popen([sys.executable, "-m", "sane", *args, str(tmp_path / "killed")],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    models = tmp_path / "killed" / "models"
    while time.monotonic() < deadline and proc.poll() is None:
        rows = [f.read_text() for f in models.glob("*/metrics.json")]
        if any(len(json.loads(r)) >= 3 for r in rows):  # epoch 2 of some model written
            break
        time.sleep(0.02)
    assert proc.poll() is None, f"the run ended before it was killed: {proc.stderr.read()}"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    zoo = Zoo.open(tmp_path / "killed")
    assert any(zoo.last_epoch(e.id) != 6 for e in zoo.models), "killed too late to test"

    assert main([*args, str(tmp_path / "killed")]) == 0
    train_population(load_config(file, epochs=6, models=6), tmp_path / "whole", progress=False)
    assert checkpoints(tmp_path / "killed") == checkpoints(tmp_path / "whole")
    assert len(checkpoints(tmp_path / "whole")) == 6 * 7
    assert not list((tmp_path / "killed" / "models").rglob("resume_*"))
    assert not list((tmp_path / "killed" / "models").rglob(".*.tmp"))


@pytest.mark.slow
def test_population_and_alone_reach_the_same_accuracy_on_fashion_mnist(tmp_path):
    assert FASHION_MNIST.is_dir(), "install the Debian package dataset-fashion-mnist"
    space = SearchSpace(seed_range=(1, 1), init=("kaiming_uniform",), optimizer=("adam", "sgd"),
                        lr=(3e-3,), weight_decay=(1e-4,), batch_size=(20,))
    data = DataConfig(name="fashion-mnist", train_size=2000, val_fraction=0.02)
    config = PopulationConfig(dataset=data, space=space, epochs=2, threads=1)
    zoo = train_population(config, tmp_path / "zoo", progress=False)

    ds = load_dataset("fashion-mnist", val_fraction=0.02)
    x, y = ds.train.x[:2000], ds.train.y[:2000]
    torch.set_num_threads(1)
    for entry in zoo.models:  # an independent plain loop: nn.Module and torch.optim
        model = build_model(entry.architecture, entry.seed)
        t = entry.training
        optimizer = (torch.optim.Adam(model.parameters(), lr=t["lr"],
                                      weight_decay=t["weight_decay"])
                     if t["optimizer"] == "adam" else
                     torch.optim.SGD(model.parameters(), lr=t["lr"], momentum=t["momentum"],
                                     weight_decay=t["weight_decay"]))
        for epoch in (1, 2):
            order = data_order(entry.seed, epoch, len(y))
            for i in range(0, len(y), t["batch_size"]):
                index = order[i:i + t["batch_size"]]
                loss = F.cross_entropy(model(x[index]), y[index])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        model.eval()
        with torch.no_grad():
            alone = (model(ds.test.x).argmax(1) == ds.test.y).double().mean().item()
        together = zoo.metrics(entry.id)[-1]["test_acc"]
        print(entry.id, entry.training["optimizer"], f"together {together:.4f} alone {alone:.4f}")
        assert together > 0.5  # the models learned something, so the comparison means it
        assert abs(together - alone) <= 0.01


def test_cli_presets_and_errors(capsys, tmp_path):
    assert main(["zoo", "presets"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in PRESETS)
    assert main(["zoo", "train", "no-such-preset", "--out", str(tmp_path / "z")]) == 2
    assert "neither a TOML file nor a preset" in capsys.readouterr().err
    assert main(["zoo", "train", "digits-cnn-s", "--epochs", "0",
                 "--out", str(tmp_path / "z")]) == 2
    assert "epochs must be positive" in capsys.readouterr().err


# -- models trained one at a time (batch norm) -----------------------------------------------

# Two ResNet-18 (Adam and SGD) on the digits at their native 8×8 (layer4 sees 1×1): two
# steps of 32 images an epoch, a tiny validation split (the 270 test images are fixed).
RESNET_TOML = """
epochs = 2
workers = 1
threads = 2

[dataset]
name = "digits"
size = 8
train_size = 64
val_fraction = 0.02

[architecture]
name = "resnet18"
in_channels = 1
input_size = 8

[space]
activation = ["relu"]
init = ["kaiming_normal"]
optimizer = ["adam", "sgd"]
lr = [0.0001]
weight_decay = [0.0001]
batch_size = [32]
"""


@pytest.fixture(scope="module")
def resnet_zoo(tmp_path_factory) -> tuple[PopulationConfig, Zoo]:
    root = tmp_path_factory.mktemp("resnet")
    (root / "resnet.toml").write_text(RESNET_TOML)
    config = load_config(root / "resnet.toml")
    return config, train_population(config, root / "zoo", progress=False)


def test_single_net_refuses_what_it_cannot_train_or_load():
    with pytest.raises(ConfigError, match="has dropout"):
        SingleNet(torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Dropout(0.5)))
    scalar = torch.nn.Linear(4, 4)
    scalar.scale = torch.nn.Parameter(torch.tensor(1.0))
    with pytest.raises(ConfigError, match="scale is a scalar parameter"):
        SingleNet(scalar)
    net = SingleNet(torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4),
                                        torch.nn.Dropout(0.0)))
    assert net.k == 1 and net.rows == [4, 4, 4, 4] and net.dropout == []
    assert net.keys == [["0.weight", "0.bias", "1.weight", "1.bias"]]
    (state,) = net.state_dicts()
    assert "1.running_var" in state
    with pytest.raises(FormatError, match="state dict keys"):
        net.load_state_dicts([{k: v for k, v in state.items() if k != "1.running_var"}])
    with pytest.raises(FormatError, match=r"1.running_var: expected torch.float32 \(4,\)"):
        net.load_state_dicts([{**state, "1.running_var": torch.ones(4, dtype=torch.float64)}])


def test_resnets_train_one_at_a_time_with_batch_norm_statistics_in_every_checkpoint(resnet_zoo):
    config, zoo = resnet_zoo
    entries = enumerate_models(config)
    assert [[e.id for e in g] for g in plan_groups(entries, lambda b: 32)] == [["m0000"],
                                                                               ["m0001"]]
    keys = list(build_model(config.architecture).state_dict())
    for entry in zoo.models:
        rows = zoo.metrics(entry.id)
        assert [r["epoch"] for r in rows] == [0, 1, 2]
        assert all(r[k] is not None for r in rows for k in METRIC_KEYS)
        states = [zoo.load_checkpoint(entry.id, epoch) for epoch in (0, 1, 2)]
        assert all(list(state) == keys for state in states)
        # Two steps of 32 images an epoch.
        assert [int(s["layer4.1.bn2.num_batches_tracked"]) for s in states] == [0, 2, 4]
        for name in ("bn1.running_mean", "layer2.0.downsample.1.running_var"):
            assert not torch.equal(states[0][name], states[1][name])
            assert not torch.equal(states[1][name], states[2][name])
        assert not list(zoo.model_dir(entry.id).glob("resume_*"))


def test_a_resnet_trains_as_a_plain_torch_loop_would(resnet_zoo):
    """The zoo's ResNets equal an independent loop of nn.Module and torch.optim, to rounding.

    Element by element the two agree to float32 rounding only for the first steps: training
    amplifies the rounding differences of the two optimizer formulas (Adam moves a weight
    whose gradient is within rounding of zero by a whole step either way; SGD's trajectory
    drifts). So parameters and running statistics are each compared as one vector, by their
    distance to the plain loop's relative to the distance training moved them. Measured over
    16 seeds and both optimizers: at most 1.1e-2 (parameters) and 3.3e-5 (statistics); the
    wrong data order in epoch 2 gives at least 8.1e-2 and 1.9e-2.
    """
    config, zoo = resnet_zoo
    ds = load_dataset("digits", size=8, val_fraction=config.dataset.val_fraction)
    x, y = ds.train.x[:64], ds.train.y[:64]
    for entry in zoo.models:
        model = build_model(entry.architecture, entry.seed)
        init = {k: v.clone() for k, v in model.state_dict().items()}
        t = entry.training
        optimizer = (torch.optim.Adam(model.parameters(), lr=t["lr"],
                                      weight_decay=t["weight_decay"])
                     if t["optimizer"] == "adam" else
                     torch.optim.SGD(model.parameters(), lr=t["lr"], momentum=t["momentum"],
                                     weight_decay=t["weight_decay"]))
        for epoch in (1, 2):
            order, loss_sum = data_order(entry.seed, epoch, len(y)), 0.0
            for i in range(0, len(y), t["batch_size"]):
                index = order[i:i + t["batch_size"]]
                loss = F.cross_entropy(model(x[index]), y[index])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                loss_sum += loss.item() * len(index)
            state, plain = zoo.load_checkpoint(entry.id, epoch), model.state_dict()
            assert list(state) == list(plain)
            parameters = [k for k, _ in model.named_parameters()]
            statistics = [k for k, b in model.named_buffers() if b.is_floating_point()]
            counts = [k for k, b in model.named_buffers() if not b.is_floating_point()]
            assert all(torch.equal(state[k], plain[k]) for k in counts)
            for keys, bound in ((parameters, 3e-2), (statistics, 3e-3)):
                apart = torch.cat([(state[k] - plain[k]).flatten() for k in keys]).norm()
                moved = torch.cat([(plain[k] - init[k]).flatten() for k in keys]).norm()
                assert apart < bound * moved, f"{entry.id} epoch {epoch}: {apart / moved}"
            assert zoo.metrics(entry.id)[epoch]["train_loss"] == pytest.approx(
                loss_sum / len(y), rel=1e-4)


def test_a_resnet_interrupted_while_writing_resumes_to_identical_checkpoints(
        resnet_zoo, tmp_path, monkeypatch):
    config, whole = resnet_zoo
    # The first model alone (it trains alone in the population too): half the time.
    config = dataclasses.replace(config, models=1)
    crash_training(config, tmp_path / "resumed", monkeypatch, after=3)  # in epoch 2
    partial = Zoo.open(tmp_path / "resumed")
    assert partial.last_epoch("m0000") == 1 and partial.resume_epochs("m0000") == [1, 2]
    train_population(config, tmp_path / "resumed", progress=False)
    expected = {k: v for k, v in checkpoints(whole.path).items() if k.startswith("m0000/")}
    assert len(expected) == 3 and checkpoints(tmp_path / "resumed") == expected
    assert not list((tmp_path / "resumed").rglob("resume_*"))


def test_a_last_batch_of_one_image_is_refused_for_batch_norm(tmp_path):
    (tmp_path / "resnet.toml").write_text(RESNET_TOML.replace("train_size = 64", "train_size = 65"))
    config = load_config(tmp_path / "resnet.toml")
    with pytest.raises(ConfigError, match="last batch of one image"):
        train_population(config, tmp_path / "zoo", progress=False)
    assert not (tmp_path / "zoo").exists()  # refused before anything is written
