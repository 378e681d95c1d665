"""Models trained one at a time (batch norm: the ResNets): records, equality with a plain
torch loop, resume, and the batch of one image they cannot train on."""

import dataclasses

import pytest
import torch

from sane.data import load_dataset
from sane.errors import ConfigError, FormatError
from sane.zoo.architectures import build_model
from sane.zoo.config import PopulationConfig, enumerate_models, load_config
from sane.zoo.generate import plan_groups, train_population
from sane.zoo.population import SingleNet
from sane.zoo.storage import METRIC_KEYS, Zoo
from zoo_helpers import checkpoints, crash_training, plain_epoch, plain_optimizer

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


@pytest.mark.slow
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


@pytest.mark.slow
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
        optimizer = plain_optimizer(model, t)
        for epoch in (1, 2):
            loss = plain_epoch(model, optimizer, x, y, entry.seed, epoch, t["batch_size"])
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
            assert zoo.metrics(entry.id)[epoch]["train_loss"] == pytest.approx(loss, rel=1e-4)


@pytest.mark.slow
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
