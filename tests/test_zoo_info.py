"""`sane zoo info`: the summary table's numbers and the accuracy plot."""

import struct

import pytest

from sane.cli import main
from sane.zoo.architectures import ArchConfig, build_model
from sane.zoo.storage import ModelEntry, Zoo
from sane.zoo.summary import plot_accuracy, summary_table

FINAL = [0.5, 0.6, 0.7, 0.8, 0.9, 1.0]  # final test accuracy of models m0..m5; m6 has none
EPOCHS = 4


@pytest.fixture
def zoo(tmp_path):
    models = [ModelEntry(f"m{i}", seed=i, architecture=ArchConfig()) for i in range(7)]
    zoo = Zoo.create(tmp_path / "zoo", models, dataset={"name": "digits"})
    state = build_model(ArchConfig(), seed=0).state_dict()
    for i, model in enumerate(models):
        for epoch in range(EPOCHS):
            if i < len(FINAL):
                acc = FINAL[i] - 0.1 * (EPOCHS - 1 - epoch)  # rises to FINAL[i]
                row = {"test_acc": acc, "train_acc": acc + 0.05}
            else:
                row = {"train_loss": 1.0}
            zoo.write_epoch(model.id, epoch, state, row)
    return zoo


def table_rows(table):
    rows = {}
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if line.startswith("| ") and cells[0] in ("train", "val", "test", "all"):
            rows[cells[0]] = cells[1:]
    return rows


def test_summary_table_numbers(zoo):
    table = summary_table(zoo)
    assert "- dataset: digits" in table and "- models: 7 (cnn_s: 7)" in table
    rows = table_rows(table)
    # all: 7 models, last epoch 3, 28 checkpoints, 6 with a test accuracy; quartiles of
    # 0.5..1.0 by linear interpolation are 0.625 and 0.875; ggap is 0.05 everywhere.
    assert rows["all"] == ["7", "3", "28", "6", "0.5000", "0.6250", "0.7500", "0.8750",
                           "1.0000", "0.7500", "0.0500"]
    final = {f"m{i}": acc for i, acc in enumerate(FINAL)}
    for part in ("train", "val", "test"):
        ids = zoo.split[part]
        accs = [final[i] for i in ids if i in final]
        assert rows[part][:4] == [str(len(ids)), "3", str(EPOCHS * len(ids)), str(len(accs))]
        if accs:
            assert rows[part][4] == f"{min(accs):.4f}" and rows[part][8] == f"{max(accs):.4f}"


def test_table_of_a_zoo_without_metrics(tmp_path):
    models = [ModelEntry(f"m{i}", seed=i, architecture=ArchConfig()) for i in range(3)]
    zoo = Zoo.create(tmp_path, models, dataset={"name": "digits"})
    assert table_rows(summary_table(zoo))["all"] == ["3", "-", "0", "0"] + ["-"] * 7


def png_size(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_plot_is_a_png(zoo, tmp_path):
    plot_accuracy(zoo, tmp_path / "plots" / "acc.png")
    assert png_size(tmp_path / "plots" / "acc.png") == (840, 540)
    assert [p.name for p in (tmp_path / "plots").iterdir()] == ["acc.png"]  # no temp left


def test_cli_info_prints_table_and_writes_plot(zoo, tmp_path, capsys):
    assert main(["zoo", "info", str(zoo.path)]) == 0
    out = capsys.readouterr().out
    assert table_rows(out)["all"][0] == "7"
    assert out.rstrip().endswith(f"plot: {zoo.path / 'accuracy.png'}")
    assert png_size(zoo.path / "accuracy.png")[0] > 0
    assert main(["zoo", "info", str(zoo.path), "--plot", str(tmp_path / "a.png")]) == 0
    assert (tmp_path / "a.png").is_file()
    assert main(["zoo", "info", str(tmp_path / "not-a-zoo")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sane: error: ") and err.count("\n") == 1 and "zoo.json" in err
