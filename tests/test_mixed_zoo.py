"""A zoo of several architectures with the same token size: one store per parameter layout,
pretraining with windows drawn across them, every layout reconstructed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sane.errors import ConfigError, FormatError
from sane.pipeline import Pipeline
from sane.run import Run
from sane.train import PretrainConfig, WindowConfig, WindowSampler, pretrain
from sane.weights.store import StoreSet, StoreSettings, TokenStore, open_store, prepare_store
from sane.zoo import ArchConfig, build_model, load_config, train_population
from sane.zoo.layout import layout_groups

MIXED = """preset = "digits-cnn-s-seed"
models = 12
epochs = 2
[space]
seed_range = [1, 6]
architecture = ["cnn_s", "cnn_s_wide"]
"""


@pytest.fixture(scope="module")
def mixed_zoo(tmp_path_factory):
    toml = tmp_path_factory.mktemp("config") / "mixed.toml"
    toml.write_text(MIXED)
    return train_population(load_config(toml), tmp_path_factory.mktemp("mixed"),
                            progress=False)


def test_a_space_of_architectures_makes_a_mixed_zoo(mixed_zoo, tmp_path):
    names = [m.architecture.name for m in mixed_zoo.models]
    assert names == ["cnn_s"] * 6 + ["cnn_s_wide"] * 6  # seeds vary fastest, architecture last
    assert [m.seed for m in mixed_zoo.models] == [1, 2, 3, 4, 5, 6] * 2
    assert layout_groups(mixed_zoo) == [[f"m{i:04d}" for i in range(6)],
                                        [f"m{i:04d}" for i in range(6, 12)]]
    toml = tmp_path / "bad.toml"
    toml.write_text(MIXED.replace('"cnn_s_wide"', '"cnn_x"'))
    with pytest.raises(ConfigError, match=r"space\.architecture must be one of"):
        load_config(toml)


@pytest.mark.slow
def test_pretraining_draws_windows_across_architectures_and_reconstructs_both(mixed_zoo,
                                                                               tmp_path,
                                                                               capsys):
    store = prepare_store(mixed_zoo.path, tmp_path / "store", StoreSettings(align=True),
                          progress=False)
    assert isinstance(store, StoreSet) and isinstance(open_store(store.path), StoreSet)
    cnn, wide = store.layouts
    assert [cnn.architectures[0].name, wide.architectures[0].name] == ["cnn_s", "cnn_s_wide"]
    # One token size, the longest row of either: the wide second convolution, 16·5·5 + bias.
    assert cnn.manifest.token_size == wide.manifest.token_size == 16 * 25 + 1
    assert cnn.manifest.num_tokens < wide.manifest.num_tokens
    assert {m for m, _, _ in cnn.rows} == {f"m{i:04d}" for i in range(6)}
    # Aligned within each architecture, to a reference of its own.
    assert cnn.alignment.reference != wide.alignment.reference
    with pytest.raises(FormatError, match="several layouts"):
        TokenStore.open(store.path)

    sampler = WindowSampler(store, "train", WindowConfig(window_size=16, batch_size=16,
                                                          views=2, canonical_first=True))
    batch = next(sampler.epoch(0))
    offset = len(cnn.rows)
    rows = batch.rows.numpy()
    assert (rows < offset).any() and (rows >= offset).any()  # both layouts in one batch
    for j, row in enumerate(rows.tolist()):
        layout, r = (cnn, row) if row < offset else (wide, row - offset)
        start = int(batch.positions[j, 0, 0])
        window = torch.from_numpy(np.array(layout.tokens[r, start:start + 16]))
        assert torch.equal(batch.clean[0, j], window)  # view 0: the stored window

    config = PretrainConfig(preset="tiny", epochs=2, batch_size=8,
                            model={"d_model": 32, "n_layers": 1})
    result = pretrain(store.path, tmp_path / "run", config, progress=False)
    assert list(result.model.config.max_positions) == [
        max(int(s.positions[:, i].max()) + 1 for s in store.layouts) for i in range(3)]
    reports = result.fidelity["layouts"]
    assert [r["architecture"] for r in reports] == ["cnn_s", "cnn_s_wide"]
    for report in reports:
        assert report["train"]["models"] >= 1 and np.isfinite(report["train"]["r2"])
        assert 0 <= report["train"]["decoded_accuracy"] <= 1
    assert "### cnn_s_wide" in (tmp_path / "run" / "report.md").read_text()

    pipe = Pipeline.from_pretrained(tmp_path / "run")
    nets = [build_model(ArchConfig(name=n, activation="relu", init="kaiming_uniform"), seed=3)
            for n in ("cnn_s", "cnn_s_wide")]
    assert pipe.embed(nets).shape == (2, result.model.config.d_latent)
    assert pipe.reconstruct(nets[1]).module_list[0].weight.shape == (16, 1, 5, 5)
    with pytest.raises(FormatError, match="give one layout, STORE/layouts/K"):
        Run(tmp_path / "run").store()
    assert Run(tmp_path / "run").store(store.path / "layouts" / "1").path.name == "1"
