"""Model Zoos import/export, checked against an independent writer of the published layout.

The writer below is this test's own code: ``nn.ModuleList`` CNNs mirroring the published
CNN-s (dropout modules only when p > 0) and CNN-l (dropout always present), ray-style trial
folder names, ``params.json`` with ``::`` keys, ``result.json`` JSON lines with ray's extra
keys, and ``checkpoint_<N>`` / ``checkpoint_<N:06d>`` folders holding ``torch.save``d state
dicts.
"""

import json
import pathlib

import pytest
import torch
from torch import nn

from sane.checkpoints import read_state_dict
from sane.cli import main
from sane.errors import FormatError
from sane.zoo.architectures import ArchConfig, build_model
from sane.zoo.modelzoos.reader import import_modelzoos
from sane.zoo.modelzoos.writer import export_modelzoos
from sane.zoo.storage import ModelEntry, Zoo

ACT = {"tanh": nn.Tanh, "relu": nn.ReLU, "gelu": nn.GELU, "sigmoid": nn.Sigmoid}


class PublishedCNN(nn.Module):
    """Model Zoos' ``CNN`` (CNN-s, 28×28 inputs)."""

    def __init__(self, channels_in, nlin, dropout):
        super().__init__()
        act = ACT[nlin]

        def drop():
            return [nn.Dropout(dropout)] if dropout > 0 else []

        self.module_list = nn.ModuleList([
            nn.Conv2d(channels_in, 8, 5), nn.MaxPool2d(2, 2), act(), *drop(),
            nn.Conv2d(8, 6, 5), nn.MaxPool2d(2, 2), act(), *drop(),
            nn.Conv2d(6, 4, 2), act(), nn.Flatten(),
            nn.Linear(36, 20), act(), *drop(),
            nn.Linear(20, 10),
        ])


class PublishedCNN3(nn.Module):
    """Model Zoos' ``CNN3`` (CNN-l, 32×32 inputs)."""

    def __init__(self, channels_in, nlin, dropout):
        super().__init__()
        act = ACT[nlin]
        self.module_list = nn.ModuleList([
            nn.Conv2d(channels_in, 16, 3), nn.MaxPool2d(2, 2), act(), nn.Dropout(dropout),
            nn.Conv2d(16, 32, 3), nn.MaxPool2d(2, 2), act(), nn.Dropout(dropout),
            nn.Conv2d(32, 15, 3), nn.MaxPool2d(2, 2), act(), nn.Dropout(dropout),
            nn.Flatten(), nn.Linear(60, 20), act(), nn.Dropout(dropout), nn.Linear(20, 10),
        ])


def published_states(kind, params, iterations, seed):
    """Independent state dicts, one per iteration (fresh PyTorch-default weights each)."""
    cls = {"CNN": PublishedCNN, "CNN3": PublishedCNN3}[kind]
    states = {}
    for it in iterations:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(1000 * seed + it)
            model = cls(params["model::channels_in"], params["model::nlin"],
                        params["model::dropout"])
        states[it] = {k: v.clone() for k, v in model.state_dict().items()}
    return states


def ray_params(kind="CNN", seed=1, nlin="tanh", dropout=0.0, channels=1, **extra):
    return {
        "model::type": kind, "model::channels_in": channels, "model::o_dim": 10,
        "model::nlin": nlin, "model::dropout": dropout, "model::init_type": "uniform",
        "model::use_bias": False, "optim::optimizer": "adam", "optim::lr": 3e-4,
        "optim::wd": 0, "optim::momentum": 0.9, "training::batchsize": 10,
        "training::epochs_train": 50, "training::start_epoch": 1, "training::output_epoch": 1,
        "training::val_epochs": 1, "training::idx_out": 500, "training::checkpoint_dir": None,
        "cuda": False, "seed": seed,
        "dataset::dump": "/data/zoos/MNIST/tune_zoo_mnist_uniform/dataset.pt", **extra,
    }


def ray_line(params, iteration, metrics, with_iteration=True):
    line = {
        **metrics, "time_this_iter_s": 1.5, "done": False, "timesteps_total": None,
        "episodes_total": None, "trial_id": "da045_00000", "experiment_id": "3f1c",
        "date": "2021-09-25_11-43-53", "timestamp": 1632563033, "time_total_s": 3.0,
        "pid": 4242, "hostname": "node1", "node_ip": "10.0.0.1", "config": params,
        "time_since_restore": 3.0, "timesteps_since_restore": 0,
        "iterations_since_restore": iteration + 1, "experiment_tag": "0_seed=1",
    }
    if with_iteration:
        line["training_iteration"] = iteration
    return line


def metrics_for(seed, it, val=True):
    m = {"train_loss": 2.0 / (it + 1), "train_acc": 0.1 + 0.01 * it + 0.001 * seed,
         "test_loss": 2.1 / (it + 1), "test_acc": 0.1 + 0.02 * it + 0.001 * seed}
    if val:
        m |= {"val_loss": 2.2 / (it + 1), "val_acc": 0.1 + 0.015 * it + 0.001 * seed}
    return m


def write_trial(root, name, params, states, lines, padded=False):
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "params.json").write_text(json.dumps(params, indent=2, sort_keys=True))
    (folder / "result.json").write_text("".join(json.dumps(x) + "\n" for x in lines))
    for it, state in states.items():
        sub = folder / (f"checkpoint_{it:06d}" if padded else f"checkpoint_{it}")
        sub.mkdir()
        torch.save(state, sub / "checkpoints")
        torch.save({"state": {}, "param_groups": []}, sub / "optimizer")
    return folder


def trial_name(index, seed):
    return f"NN_tune_trainable_da045_{index:05d}_{index}_seed={seed}_2021-09-25_11-43-5{index}"


@pytest.fixture
def source(tmp_path):
    """A small zoo: CNN-s with checkpoint_0 and val metrics, CNN-s dropout 0.5 without
    checkpoint_0 (padded folders), CNN-l without training_iteration; plus a non-trial folder.
    Returns (root, {folder name: (params, states, metrics by epoch)})."""
    root = tmp_path / "tune_zoo_mnist_uniform"
    trials = {}

    p = ray_params(seed=1)
    states = published_states("CNN", p, range(4), 1)
    lines = [ray_line(p, it, metrics_for(1, it)) for it in range(4)]
    lines[0] |= {"train_loss": -999, "train_acc": -999}  # the initial eval of Model Zoos
    write_trial(root, trial_name(0, 1), p, states, lines)
    trials[trial_name(0, 1)] = (p, states, {it: lines[it] for it in range(4)})

    p = ray_params(seed=2, nlin="gelu", dropout=0.5)
    states = published_states("CNN", p, range(1, 4), 2)
    lines = [ray_line(p, it, metrics_for(2, it, val=False)) for it in range(1, 4)]
    write_trial(root, trial_name(1, 2), p, states, lines, padded=True)
    trials[trial_name(1, 2)] = (p, states, {it: lines[it - 1] for it in range(1, 4)})

    p = ray_params("CNN3", seed=3, nlin="relu", channels=3)
    states = published_states("CNN3", p, range(3), 3)
    lines = [ray_line(p, it, metrics_for(3, it), with_iteration=False) for it in range(3)]
    write_trial(root, trial_name(2, 3), p, states, lines)
    trials[trial_name(2, 3)] = (p, states, {it: lines[it] for it in range(3)})

    (root / "basic-variant-state").mkdir()
    return root, trials


def assert_same_state(a, b):
    assert sorted(a) == sorted(b)  # safetensors files list keys in sorted order
    for key in a:
        assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key


def test_import_reads_every_checkpoint_bit_for_bit_and_maps_epochs(source, tmp_path):
    root, trials = source
    report = import_modelzoos(root, tmp_path / "zoo", progress=False)
    assert (report.models, report.checkpoints, report.skipped) == (3, 10, ())
    assert report.ignored == ("basic-variant-state",)
    zoo = Zoo.open(tmp_path / "zoo")
    names = zoo.manifest["modelzoos"]["trials"]
    assert [names[m.id] for m in zoo.models] == sorted(trials)
    assert zoo.dataset["name"] == "mnist"
    for model in zoo.models:
        params, states, lines = trials[names[model.id]]
        assert model.seed == params["seed"]
        assert zoo.checkpoint_epochs(model.id) == sorted(states)
        for epoch, state in states.items():
            assert_same_state(zoo.load_checkpoint(model.id, epoch), state)
        rows = zoo.metrics(model.id)
        assert [r["epoch"] for r in rows] == sorted(lines)
        for row in rows:
            line = lines[row["epoch"]]
            for key in ("train_loss", "train_acc", "test_loss", "test_acc", "val_loss",
                        "val_acc"):
                expected = line.get(key)
                assert row[key] == (None if expected in (None, -999) else expected), key


def test_architectures_and_recipes_from_params(source, tmp_path):
    root, _ = source
    import_modelzoos(root, tmp_path / "zoo", progress=False)
    zoo = Zoo.open(tmp_path / "zoo")
    archs = [m.architecture for m in zoo.models]
    assert archs[0] == ArchConfig("cnn_s", "tanh", 0.0, "uniform", 1, 10, 28)
    assert archs[1] == ArchConfig("cnn_s", "gelu", 0.5, "uniform", 1, 10, 28)
    assert archs[2] == ArchConfig("cnn_l", "relu", 0.0, "uniform", 3, 10, 32)
    # Dropout 0.5 shifts the module_list indices: the rebuilt model takes the keys as they are.
    state = zoo.load_checkpoint(zoo.models[1].id, 3)
    assert "module_list.14.weight" in state and "module_list.11.weight" in state
    build_model(archs[1]).load_state_dict(state)
    assert zoo.models[0].training == {
        "optimizer": "adam", "lr": 3e-4, "weight_decay": 0, "momentum": 0.9,
        "batch_size": 10, "epochs": 50,
    }


def test_offset_rule_without_training_iteration_and_without_checkpoint_0(tmp_path):
    root = tmp_path / "src"
    p = ray_params(seed=5)
    states = published_states("CNN", p, [1, 2], 5)
    lines = [ray_line(p, it, metrics_for(5, it), with_iteration=False) for it in (1, 2)]
    write_trial(root, trial_name(0, 5), p, states, lines)
    import_modelzoos(root, tmp_path / "zoo", progress=False)
    zoo = Zoo.open(tmp_path / "zoo")
    rows = zoo.metrics(zoo.models[0].id)
    assert [(r["epoch"], r["test_acc"]) for r in rows] == [
        (1, metrics_for(5, 1)["test_acc"]), (2, metrics_for(5, 2)["test_acc"])]


def test_ids_do_not_depend_on_directory_listing_order(source, tmp_path, monkeypatch):
    root, _ = source
    import_modelzoos(root, tmp_path / "a", progress=False)
    listing = pathlib.Path.iterdir
    monkeypatch.setattr(pathlib.Path, "iterdir", lambda self: reversed(list(listing(self))))
    import_modelzoos(root, tmp_path / "b", progress=False)
    a, b = (json.loads((tmp_path / d / "zoo.json").read_text()) for d in ("a", "b"))
    assert a == b and [m["id"] for m in a["models"]] == ["m00000", "m00001", "m00002"]


def test_bad_checkpoints_are_skipped_and_their_rows_kept(tmp_path):
    root = tmp_path / "src"
    p = ray_params(seed=7)
    states = published_states("CNN", p, range(5), 7)
    states[1]["module_list.0.weight"][0, 0, 0, 0] = float("nan")
    states[2]["module_list.3.bias"][1] = float("inf")
    states[3]["module_list.9.weight"][2, 3] = 1e6
    lines = [ray_line(p, it, metrics_for(7, it)) for it in range(5)]
    folder = write_trial(root, trial_name(0, 7), p, states, lines)
    (folder / "checkpoint_4" / "checkpoints").write_bytes(b"not a torch file")
    report = import_modelzoos(root, tmp_path / "zoo", progress=False)
    reasons = {s.path.parent.name: s.reason for s in report.skipped}
    assert (report.models, report.checkpoints, report.skipped_checkpoints) == (1, 1, 4)
    assert "module_list.0.weight holds NaN" in reasons["checkpoint_1"]
    assert "module_list.3.bias holds NaN or infinite" in reasons["checkpoint_2"]
    assert "module_list.9.weight has |w| = 1e+06 > max_abs = 10000" in reasons["checkpoint_3"]
    assert "not a checkpoint (text)" in reasons["checkpoint_4"]
    assert all(str(folder) in r for r in reasons.values())
    zoo = Zoo.open(tmp_path / "zoo")
    rows = zoo.metrics("m00000")
    assert [(r["epoch"], r["checkpoint"]) for r in rows] == [
        (0, True), (1, False), (2, False), (3, False), (4, False)]
    assert rows[3]["test_acc"] == metrics_for(7, 3)["test_acc"]
    assert "skipped 4 checkpoints and 0 trials" in str(report)
    saved = json.loads((tmp_path / "zoo" / "import_report.json").read_text())
    assert len(saved["skipped"]) == 4


def test_max_abs_is_a_parameter(tmp_path):
    root = tmp_path / "src"
    p = ray_params(seed=8)
    states = published_states("CNN", p, range(2), 8)
    states[1]["module_list.0.weight"][0, 0, 0, 0] = 6.0
    write_trial(root, trial_name(0, 8), p, states, [ray_line(p, 0, metrics_for(8, 0))])
    report = import_modelzoos(root, tmp_path / "zoo", max_abs=5, progress=False)
    assert report.checkpoints == 1 and "|w| = 6 > max_abs = 5" in report.skipped[0].reason


def test_pickled_object_is_rejected_not_executed(tmp_path):
    marker = tmp_path / "executed"

    class Payload:
        def __reduce__(self):
            return (pathlib.Path.touch, (marker,))

    file = tmp_path / "checkpoints"
    torch.save({"module_list.0.weight": torch.zeros(1), "x": Payload()}, file)
    with pytest.raises(FormatError, match=r"refused by weights-only loading.*GLOBAL"):
        read_state_dict(file)
    assert not marker.exists()

    root = tmp_path / "src"
    p = ray_params(seed=9)
    states = published_states("CNN", p, range(2), 9)
    folder = write_trial(root, trial_name(0, 9), p, states, [])
    torch.save({**states[1], "extra": Payload()}, folder / "checkpoint_1" / "checkpoints")
    report = import_modelzoos(root, tmp_path / "zoo", progress=False)
    assert report.checkpoints == 1 and "weights-only" in report.skipped[0].reason
    assert not marker.exists()


def test_key_mismatch_names_the_key(tmp_path):
    root = tmp_path / "src"
    written = ray_params(seed=4, dropout=0.5)
    claimed = ray_params(seed=4, dropout=0.0)  # params.json disagrees with the weights
    write_trial(root, trial_name(0, 4), claimed, published_states("CNN", written, [0], 4), [])
    with pytest.raises(FormatError, match=r"no trial could be imported.*missing module_list\.3"):
        import_modelzoos(root, tmp_path / "zoo", progress=False)


@pytest.mark.parametrize("damage, message", [
    (lambda f: (f / "params.json").write_text("{not json"), "params.json: not valid JSON"),
    (lambda f: (f / "params.json").write_text(json.dumps({**ray_params(), "model::type": "MLP"})),
     "model::type 'MLP' is not supported"),
    (lambda f: (f / "params.json").write_text(json.dumps({**ray_params(), "seed": "1"})),
     "seed must be int"),
    (lambda f: (f / "result.json").write_text('{"training_iteration": 1}\n{"training_iter'),
     "result.json, line 2: not valid JSON"),
    (lambda f: (f / "result.json").write_text(
        '{"training_iteration": 1}\n{"training_iteration": 0}\n'), "follows 1"),
    (lambda f: (f / "result.json").write_text(
        '{"training_iteration": 0, "test_acc": 97.5}\n'), "not a fraction"),
    (lambda f: (f / "result.json").unlink(), "result.json: not found"),
    (lambda f: (f / "checkpoint_000001").mkdir(), "two checkpoint folders for iteration 1"),
])
def test_bad_trials_are_skipped_and_strict_raises(tmp_path, damage, message):
    root = tmp_path / "src"
    p = ray_params(seed=1)
    write_trial(root, trial_name(0, 1), p, published_states("CNN", p, [0, 1], 1),
                [ray_line(p, 0, metrics_for(1, 0))])
    bad = write_trial(root, trial_name(1, 2), p, published_states("CNN", p, [0, 1], 2),
                      [ray_line(p, 0, metrics_for(2, 0))])
    damage(bad)
    report = import_modelzoos(root, tmp_path / "zoo", progress=False)
    assert report.models == 1 and report.skipped_trials == 1
    assert message in report.skipped[0].reason and str(bad) in report.skipped[0].reason
    with pytest.raises(FormatError, match=message.replace("(", r"\(")):
        import_modelzoos(root, tmp_path / "strict", strict=True, progress=False)


def test_missing_or_empty_source(tmp_path):
    with pytest.raises(FormatError, match="no such directory"):
        import_modelzoos(tmp_path / "absent", tmp_path / "zoo")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FormatError, match="no trial folders"):
        import_modelzoos(tmp_path / "empty", tmp_path / "zoo")


def test_interrupted_import_resumes_and_other_settings_are_refused(source, tmp_path):
    root, _ = source
    import_modelzoos(root, tmp_path / "once", progress=False)
    import_modelzoos(root, tmp_path / "twice", progress=False)
    # A kill before the last metrics row of a model was committed.
    metrics = tmp_path / "twice" / "models" / "m00001" / "metrics.json"
    metrics.write_text(json.dumps(json.loads(metrics.read_text())[:1]))
    report = import_modelzoos(root, tmp_path / "twice", progress=False)
    assert report.checkpoints == 10
    once, twice = Zoo.open(tmp_path / "once"), Zoo.open(tmp_path / "twice")
    for model in once.models:
        assert once.metrics(model.id) == twice.metrics(model.id)
        for epoch in once.checkpoint_epochs(model.id):
            assert_same_state(once.load_checkpoint(model.id, epoch),
                              twice.load_checkpoint(model.id, epoch))
    with pytest.raises(FormatError, match="holds another zoo"):
        import_modelzoos(root, tmp_path / "twice", max_abs=5, progress=False)


def assert_same_zoo(a, b):
    assert [m.to_dict() for m in a.models] == [m.to_dict() for m in b.models]
    assert a.split == b.split and a.dataset == b.dataset
    for model in a.models:
        assert a.metrics(model.id) == b.metrics(model.id)
        for epoch in a.checkpoint_epochs(model.id):
            assert_same_state(a.load_checkpoint(model.id, epoch),
                              b.load_checkpoint(model.id, epoch))


def test_import_export_import_round_trip(source, tmp_path):
    root, trials = source
    import_modelzoos(root, tmp_path / "a", progress=False)
    export_modelzoos(tmp_path / "a", tmp_path / "exported", progress=False)
    assert sorted(p.name for p in (tmp_path / "exported").iterdir()) == sorted(trials)
    first = tmp_path / "exported" / sorted(trials)[0]
    assert (first / "checkpoint_000003" / "checkpoints").is_file()
    line = json.loads((first / "result.json").read_text().splitlines()[0])
    assert line["training_iteration"] == 0 and "train_acc" not in line  # -999 became unknown
    import_modelzoos(tmp_path / "exported", tmp_path / "b", progress=False)
    a, b = Zoo.open(tmp_path / "a"), Zoo.open(tmp_path / "b")
    assert_same_zoo(a, b)
    assert a.manifest["modelzoos"]["trials"] == b.manifest["modelzoos"]["trials"]


def test_native_zoo_round_trips_through_export(tmp_path):
    archs = [
        ArchConfig("cnn_s", "tanh", 0.0, "uniform", 1, 3, 28),  # 3 classes: not a Model Zoos CNN
        ArchConfig("cnn_s_wide", "relu", 0.5, "kaiming_normal", 1, 10, 28),
        ArchConfig("mlp", "gelu", 0.0, "xavier_uniform", 1, 10, 8, width=2, hidden=(16,)),
        ArchConfig("cnn1d", "silu", 0.0, "normal", 1, 10, 40),
        ArchConfig("cnn_l", "sigmoid", 0.25, "uniform", 3, 10, 32),
    ]
    models = [ModelEntry(f"model-{i}", seed=10 + i, architecture=a,
                         training={"optimizer": "sgd", "lr": 0.01, "label_smoothing": 0.1,
                                   "augment": ["flip"]})
              for i, a in enumerate(archs)]
    zoo = Zoo.create(tmp_path / "zoo", models, dataset={"name": "digits", "train_size": 100},
                     split_seed=3)
    for i, m in enumerate(models):
        for epoch in range(3):
            state = build_model(m.architecture, seed=100 * i + epoch).state_dict()
            row = {"test_acc": 0.1 * i + 0.01 * epoch, "train_loss": 1.0 / (epoch + 1)}
            zoo.write_epoch(m.id, epoch, state if epoch != 1 else None, row)
    assert main(["zoo", "export", str(tmp_path / "zoo"), "--out", str(tmp_path / "x")]) == 0
    params = json.loads((tmp_path / "x" / "NN_tune_trainable_model-0" / "params.json")
                        .read_text())
    assert params["model::type"] == "CNN" and params["sane::architecture::num_classes"] == 3
    import_modelzoos(tmp_path / "x", tmp_path / "back", progress=False)
    assert_same_zoo(zoo, Zoo.open(tmp_path / "back"))


def test_resnet18_key_names(tmp_path):
    """Keys and shapes of torchvision's ResNet-18 with the Model Zoos 3×3 stem, by hand."""
    def bn(prefix, c):
        return {f"{prefix}.weight": [c], f"{prefix}.bias": [c], f"{prefix}.running_mean": [c],
                f"{prefix}.running_var": [c], f"{prefix}.num_batches_tracked": []}

    shapes = {"conv1.weight": [64, 3, 3, 3], **bn("bn1", 64)}
    c_in = 64
    for layer, c in enumerate((64, 128, 256, 512), 1):
        for block in range(2):
            p = f"layer{layer}.{block}"
            first = c_in if block == 0 else c
            shapes |= {f"{p}.conv1.weight": [c, first, 3, 3], **bn(f"{p}.bn1", c),
                       f"{p}.conv2.weight": [c, c, 3, 3], **bn(f"{p}.bn2", c)}
            if block == 0 and first != c:
                shapes |= {f"{p}.downsample.0.weight": [c, first, 1, 1],
                           **bn(f"{p}.downsample.1", c)}
        c_in = c
    shapes |= {"fc.weight": [10, 512], "fc.bias": [10]}
    gen = torch.Generator().manual_seed(0)
    state = {k: (torch.tensor(50_000) if k.endswith("num_batches_tracked")  # a count, not a weight
                 else 0.05 * torch.randn(s, generator=gen)) for k, s in shapes.items()}
    p = ray_params("Resnet18", seed=1, nlin="relu", channels=3, **{"model::init_type":
                                                                     "kaiming_uniform"})
    write_trial(tmp_path / "src", trial_name(0, 1), p, {60: state}, [], padded=True)
    report = import_modelzoos(tmp_path / "src", tmp_path / "zoo", progress=False)
    assert report.checkpoints == 1, report
    zoo = Zoo.open(tmp_path / "zoo")
    assert zoo.models[0].architecture == ArchConfig("resnet18", "relu", 0.0, "kaiming_uniform",
                                                    3, 10, 32)
    assert_same_state(zoo.load_checkpoint("m00000", 60), state)


def test_cli_import_prints_summary_and_errors_in_one_line(source, tmp_path, capsys):
    root, _ = source
    assert main(["zoo", "import", str(root), "--out", str(tmp_path / "zoo")]) == 0
    out = capsys.readouterr().out
    assert out.startswith("imported 3 models with 10 checkpoints")
    assert "ignored 1 folder without params.json" in out
    assert main(["zoo", "import", str(tmp_path / "nowhere"), "--out", str(tmp_path / "z")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("sane: error: ")
    assert str(tmp_path / "nowhere") in err and "Traceback" not in err
    assert main(["zoo", "export", str(tmp_path / "zoo"), "--out", str(root)]) == 2
    assert "not an empty directory" in capsys.readouterr().err


@pytest.mark.parametrize("folder, dump, name", [
    ("zoo", "/z/zoos/FMNIST/tune_zoo_f_mnist_uniform/dataset.pt", "fashion-mnist"),
    ("zoo", "/z/zoos/CIFAR10/tune_zoo_cifar10_small_uniform/dataset.pt", "cifar10"),
    ("tune_zoo_svhn_uniform", None, "svhn"),
    ("zoo", None, "unknown"),
])
def test_dataset_inferred_from_dump_or_folder(tmp_path, folder, dump, name):
    p = {k: v for k, v in ray_params(seed=1, **{"dataset::dump": dump}).items() if v is not None}
    write_trial(tmp_path / folder, trial_name(0, 1), p, published_states("CNN", p, [0], 1), [])
    import_modelzoos(tmp_path / folder, tmp_path / "out", progress=False)
    dataset = Zoo.open(tmp_path / "out").dataset
    assert dataset == ({"name": name, "dump": dump} if dump else {"name": name})


def test_duplicate_model_ids_are_refused(tmp_path):
    for i in range(2):
        p = ray_params(seed=i, **{"sane::id": "same"})
        write_trial(tmp_path / "src", trial_name(i, i), p, published_states("CNN", p, [0], i), [])
    with pytest.raises(FormatError, match=r"model id\(s\) \['same'\]"):
        import_modelzoos(tmp_path / "src", tmp_path / "out", progress=False)
