"""A pretraining run is portable: its tokenizer embeds and reconstructs models from anywhere,
with no zoo or token store present (`sane embed`)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from sane.cli import main
from sane.downstream import sane_embeddings
from sane.downstream.embedding import embed_checkpoints, read_checkpoint
from sane.errors import FormatError
from sane.model import SANE
from sane.train import PretrainConfig, pretrain
from sane.weights.store import StoreSettings, prepare_store
from sane.weights.tokenizer import Tokenizer
from sane.zoo import ArchConfig, Zoo, build_model


def _reconstruct(model, tokens, positions):
    with torch.no_grad():
        return model.decode_sequence(model.encode_sequence(tokens[None], positions), positions)[0]


def test_a_moved_run_embeds_and_reconstructs_like_its_store(trained_store, tmp_path, capsys):
    zoo = Zoo.open(shutil.copytree(trained_store.meta["zoo"], tmp_path / "zoo"))
    store = prepare_store(zoo.path, tmp_path / "store", StoreSettings(align=True),
                          progress=False)
    model = pretrain(store.path, tmp_path / "run",
                     PretrainConfig(preset="tiny", epochs=1, batch_size=8,
                                    model={"d_model": 32, "n_layers": 1}),
                     progress=False)
    rows = [r for r, (_, epoch, _) in enumerate(store.rows) if epoch == 3]
    expected = sane_embeddings(model, store)[rows]
    files = []
    for i, r in enumerate(rows):  # the last checkpoints, kept outside the zoo
        state = zoo.load_checkpoint(store.rows[r][0], 3)
        files.append(tmp_path / "elsewhere" / (f"m{i}.pt" if i % 2 else f"m{i}.safetensors"))
        files[-1].parent.mkdir(exist_ok=True)
        torch.save(state, files[-1]) if i % 2 else save_file(state, str(files[-1]))
    reconstructed = _reconstruct(model, torch.tensor(store.tokens[rows[0]]), store.positions)
    moved = shutil.move(tmp_path / "run", tmp_path / "moved")
    shutil.rmtree(zoo.path)
    shutil.rmtree(store.path)

    np.testing.assert_allclose(embed_checkpoints(moved, files), expected, atol=1e-5)
    tokenizer = Tokenizer.from_pretrained(moved)
    loaded = SANE.from_pretrained(moved)
    tokens = tokenizer.encode(read_checkpoint(files[0]))
    again = _reconstruct(loaded, tokens, tokenizer.manifest.positions())
    torch.testing.assert_close(again, reconstructed, rtol=1e-5, atol=1e-5)
    decoded = tokenizer.decode(again)
    assert set(decoded) == set(tokenizer.manifest.keys)

    out = tmp_path / "e.npy"
    assert main(["embed", str(moved), *map(str, files), "--out", str(out)]) == 0
    np.testing.assert_allclose(np.load(out), expected, atol=1e-5)
    mlp = tmp_path / "mlp.safetensors"
    save_file(build_model(ArchConfig(name="mlp")).state_dict(), str(mlp))
    assert main(["embed", str(moved), str(mlp), "--out", str(out)]) == 2
    assert "key 'module_list.0.weight' is missing" in capsys.readouterr().err


def test_keys_shifted_by_dropout_are_renamed_and_bad_files_refused(trained_store, tmp_path):
    tokenizer = trained_store.tokenizer()
    arch = trained_store.architecture(0)
    plain = build_model(arch, seed=3).state_dict()
    dropout = build_model(ArchConfig(**{**arch.to_dict(), "dropout": 0.5}), seed=3).state_dict()
    assert set(plain) != set(dropout)
    assert torch.equal(tokenizer.encode(plain), tokenizer.encode(dropout))
    wider = build_model(ArchConfig(name="cnn_s_wide"), seed=0).state_dict()
    with pytest.raises(FormatError, match=r"module_list\.0\.weight"):
        tokenizer.encode(wider)
    evil = tmp_path / "evil.pt"
    torch.save({"weight": torch.zeros(2), "config": object.__new__(ArchConfig)}, evil)
    with pytest.raises(FormatError, match="weights-only"):
        read_checkpoint(evil)


def test_a_store_whose_zoo_is_gone_still_pretrains_without_a_tokenizer(random_store, tmp_path):
    import json

    copy = shutil.copytree(random_store.path, tmp_path / "store")
    meta = json.loads((copy / "store.json").read_text())
    (copy / "store.json").write_text(json.dumps({**meta, "zoo": str(tmp_path / "gone")}))
    config = PretrainConfig(preset="tiny", epochs=1, batch_size=8,
                            model={"d_model": 32, "n_layers": 1})
    with pytest.warns(UserWarning, match="no tokenizer saved"):
        pretrain(copy, tmp_path / "run", config, progress=False)
    assert (tmp_path / "run" / "model.safetensors").is_file()
    assert not (tmp_path / "run" / "tokenizer.json").exists()
    with pytest.raises(FormatError, match="holds no tokenizer"):
        embed_checkpoints(tmp_path / "run", [tmp_path / "any.safetensors"])
