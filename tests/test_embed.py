"""A pretraining run is portable: it embeds, reconstructs and samples models from anywhere,
with no zoo or token store present (`sane.Pipeline`, `sane embed`)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import sane
from sane.checkpoints import read_state_dict
from sane.cli import main
from sane.downstream.features import spread_features
from sane.errors import ConfigError, FormatError
from sane.model import SANE
from sane.pipeline import Pipeline
from sane.stages.embed import embed_checkpoints
from sane.stages.features import store_embeddings
from sane.stages.reference import fit_reference
from sane.train import PretrainConfig, pretrain
from sane.train.config import model_config
from sane.weights import apply_permutation, weight_matching
from sane.weights.permutations import embedding_views
from sane.weights.store import StoreSettings, TokenStore, prepare_store
from sane.weights.tokenize import tokenize_into
from sane.weights.tokenizer import Tokenizer
from sane.weights.zoo_tokenizer import fit_zoo
from sane.zoo import ArchConfig, Zoo, build_model


def _load(zoo: Zoo, model_id: str, epoch: int) -> torch.nn.Module:
    net = build_model(zoo.model(model_id).architecture)
    net.load_state_dict(zoo.load_checkpoint(model_id, epoch))
    return net


def _assert_equal(a: dict, b: dict) -> None:
    assert list(a) == list(b)
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.fixture(scope="module")
def tiny_digits_run(trained_store) -> SANE:
    """An untrained small SANE for ``trained_store``'s tokens."""
    return SANE(model_config(PretrainConfig(preset="tiny", model={"d_model": 32}),
                             trained_store))


@pytest.mark.slow
def test_a_copied_run_without_store_or_zoo_embeds_reconstructs_and_samples_as_the_original(
        trained_store, tmp_path, capsys):
    zoo = Zoo.open(shutil.copytree(trained_store.zoo_path, tmp_path / "zoo"))
    store = prepare_store(zoo.path, tmp_path / "store", StoreSettings(align=True),
                          progress=False)
    model = pretrain(store.path, tmp_path / "run",
                     PretrainConfig(preset="tiny", epochs=1, batch_size=8,
                                    model={"d_model": 32, "n_layers": 1}),
                     progress=False).model
    fit_reference(tmp_path / "run")  # as `sane pretrain` does
    rows = [r for r, (_, epoch, _) in enumerate(store.rows) if epoch == 3]
    nets = [_load(zoo, store.rows[r][0], 3) for r in rows]
    files = []
    for i, net in enumerate(nets):  # the last checkpoints, kept outside the zoo
        files.append(tmp_path / "elsewhere" / (f"m{i}.pt" if i % 2 else f"m{i}.safetensors"))
        files[-1].parent.mkdir(exist_ok=True)
        state = net.state_dict()
        torch.save(state, files[-1]) if i % 2 else save_file(state, str(files[-1]))
    original = Pipeline.from_pretrained(tmp_path / "run")
    embedded = original.embed(nets)
    reconstructed = original.reconstruct(nets[0])
    sampled = original.sample(nets[:3], 4, seed=5)

    copy = shutil.copytree(tmp_path / "run", tmp_path / "copy")
    shutil.rmtree(zoo.path)
    shutil.rmtree(store.path)
    shutil.rmtree(tmp_path / "run")
    moved = sane.Pipeline.from_pretrained(copy)
    # The original's embeddings are those of the store the SANE was trained on.
    np.testing.assert_allclose(embedded, store_embeddings(Pipeline(model, store.tokenizer),
                                                          store, progress=False)[rows],
                               atol=1e-5)
    np.testing.assert_array_equal(moved.embed(nets), embedded)
    np.testing.assert_array_equal(embed_checkpoints(copy, files), embedded)
    _assert_equal(moved.reconstruct(nets[0]).state_dict(), reconstructed.state_dict())
    for a, b in zip(moved.sample(nets[:3], 4, seed=5), sampled):
        _assert_equal(a.state_dict(), b.state_dict())

    out = tmp_path / "e.npy"
    assert main(["embed", str(copy), *map(str, files), "--out", str(out)]) == 0
    np.testing.assert_array_equal(np.load(out), embedded)
    # The run keeps its training split's embeddings: the zoo's own models are in distribution.
    flags = json.loads(out.with_suffix(".ood.json").read_text())
    assert [f["checkpoint"] for f in flags["checkpoints"]] == list(map(str, files))
    assert not any(f["ood"] for f in flags["checkpoints"])
    mlp = tmp_path / "mlp.safetensors"
    save_file(build_model(ArchConfig(name="mlp")).state_dict(), str(mlp))
    assert main(["embed", str(copy), str(mlp), "--out", str(out)]) == 2
    assert f"{mlp}: the state dict does not fit this tokenizer: key 'module_list.0.weight' " \
           "is missing" in capsys.readouterr().err


def test_pipeline_outputs_take_the_form_of_its_inputs(trained_store, tiny_digits_run):
    pipe = sane.Pipeline(tiny_digits_run, trained_store.tokenizer)
    arch = trained_store.architecture(0)
    dropout = build_model(ArchConfig(**{**arch.to_dict(), "dropout": 0.5}), seed=3)
    new = pipe.sample([dropout], 2, bandwidth=0.0)
    assert all(type(n) is type(dropout) and not n.training for n in new)
    # Bandwidth 0 reproduces the prompt's reconstruction; a state dict keeps its own keys.
    _assert_equal(new[0].state_dict(), pipe.reconstruct(dropout).state_dict())
    state = pipe.reconstruct(dropout.state_dict())
    assert list(state) == list(dropout.state_dict())
    _assert_equal(state, new[1].state_dict())
    # The decoded weights are the de-standardized decoded tokens.
    positions = trained_store.tokenizer.manifest.positions()
    tokens = pipe.model.decode_sequence(pipe.latents([dropout])[0][None], positions)[0]
    decoded = trained_store.tokenizer.decode(tokens)
    assert all(torch.equal(a, b) for a, b in zip(decoded.values(), state.values()))
    # The latent line: its ends decode to the two reconstructions, its middle to the mean.
    other = build_model(ArchConfig(**{**arch.to_dict(), "dropout": 0.5}), seed=4)
    ends = pipe.interpolate(dropout, other, [0.0, 1.0, 0.5])
    _assert_equal(ends[0].state_dict(), pipe.reconstruct(dropout).state_dict())
    _assert_equal(ends[1].state_dict(), pipe.reconstruct(other).state_dict())
    za, zb = pipe.latents([dropout, other])
    _assert_equal(ends[2].state_dict(),
                  pipe.decode(((za + zb) / 2)[None], like=dropout)[0].state_dict())
    with pytest.raises(FormatError, match=r"latents must be \[B, N, d_z\]"):
        pipe.decode(za, like=dropout)
    with pytest.raises(FormatError, match=r"latents of this architecture are \[B, "):
        pipe.decode(za[None, :-1], like=dropout)
    with pytest.raises(ConfigError, match="non-empty list of models"):
        pipe.embed(dropout)
    with pytest.raises(FormatError, match=r"model 1: the state dict does not fit"):
        pipe.embed([dropout, build_model(ArchConfig(name="mlp"))])
    with pytest.raises(ConfigError, match="count >= 1 and bandwidth >= 0"):
        pipe.sample([dropout], 0)


def test_an_embedding_averages_tiled_views_of_the_aligned_model_and_fixed_random_permutations(
        trained_store, tiny_digits_run):
    pipe = sane.Pipeline(tiny_digits_run, trained_store.tokenizer)
    tokenizer, spec = trained_store.tokenizer, trained_store.tokenizer.spec
    nets = [build_model(trained_store.architecture(0), seed=s) for s in (1, 2)]
    views = embedding_views(spec, 3, seed=7)
    assert views[0] is None and len(views) == 4
    n, positions = tokenizer.manifest.num_tokens, tokenizer.manifest.positions()
    window = tiny_digits_run.config.window_size
    assert n > window  # several windows: tiling differs from haloing
    averaged, aligned_only = [], []  # per model: [2·d_z] and [N, d_z]
    for net in nets:  # each view's tokens made from the permuted state dict, then encoded
        aligned = tokenizer.aligned(net.state_dict())
        views_tokens = [tokenizer.reader(aligned if p is None else apply_permutation(
            aligned, spec, p), aligned=True)(0, n) for p in views]
        with torch.no_grad():  # windows side by side, no halo
            latents = tiny_digits_run.encode_sequence(torch.stack(views_tokens), positions,
                                                      window=window, halo=0)
        averaged.append(spread_features(latents).mean(0))  # each view's features, averaged
        aligned_only.append(latents[0])
    embedded = pipe.embed(nets, permutations=3, seed=7, spread=True)
    np.testing.assert_allclose(embedded, torch.stack(averaged).numpy(), atol=1e-5)
    d = tiny_digits_run.config.d_latent
    np.testing.assert_allclose(pipe.embed(nets, permutations=3, seed=7), embedded[:, :d],
                               atol=1e-6)
    # the same views for every model: a model's embedding does not depend on its company
    np.testing.assert_array_equal(pipe.embed(nets[1:], permutations=3, seed=7), embedded[1:, :d])
    assert not np.allclose(pipe.embed(nets, permutations=3, seed=8), embedded[:, :d], atol=1e-4)
    # no permutation: the mean latent of the aligned model, tiled (not haloed)
    once = pipe.embed(nets, permutations=0)
    np.testing.assert_allclose(once, torch.stack([z.mean(0) for z in aligned_only]).numpy(),
                               atol=1e-6)
    haloed = torch.stack([z.mean(0) for z in pipe.latents(nets)]).numpy()
    assert not np.allclose(once, haloed, atol=1e-6)
    # already aligned checkpoints (a store's) skip weight matching, to the same embeddings
    states = [trained_store.state_dict(r) for r in range(3)]
    np.testing.assert_allclose(pipe.embed(states, permutations=3, seed=7, aligned=True),
                               pipe.embed(states, permutations=3, seed=7), atol=1e-5)
    assert embedding_views(None, 5) == [None]
    with pytest.raises(ConfigError, match="permutations must be >= 0"):
        embedding_views(spec, -1)


def test_a_tokenizer_fitted_on_a_zoo_is_the_store_s(trained_store):
    fitted = fit_zoo(trained_store.zoo_path, align=True).tokenizer
    store = trained_store.tokenizer
    assert fitted.manifest == store.manifest
    assert fitted.standardization == store.standardization
    _assert_equal(fitted.reference, store.reference)
    zoo = Zoo.open(trained_store.zoo_path)
    state = zoo.load_checkpoint("m0003", 2)
    assert torch.equal(fitted.encode(state), store.encode(state))
    plain = fit_zoo(zoo, epochs=[3])
    assert plain.tokenizer.reference is None
    assert plain.tokenizer.standardization != store.standardization
    # the tokenizer itself takes state dicts: the zoo's training checkpoints give the same
    model = build_model(plain.layout.arch)
    train = [plain.load(m, e) for m, e, split in plain.rows if split == "train"]
    assert Tokenizer.fit(model, train, seed=0) == plain.tokenizer
    assert Tokenizer.fit(model, train, reference=store.reference).spec == store.spec


def test_a_tokenizer_makes_any_range_of_its_tokens_and_decodes_pieces(trained_store):
    tokenizer = trained_store.tokenizer
    state = tokenizer.canonical(Zoo.open(trained_store.zoo_path).load_checkpoint("m0003", 2))
    # The tokens made whole, step by step: align, standardize every entry, tokenize.
    perms = weight_matching(tokenizer.spec, tokenizer.reference, state, seed=tokenizer.seed)
    aligned = apply_permutation(state, tokenizer.spec, perms)
    expected = torch.empty(tokenizer.manifest.num_tokens, tokenizer.manifest.token_size)
    tokenize_into(tokenizer.standardization.apply(aligned), tokenizer.manifest, expected)
    assert torch.equal(tokenizer.encode(state), expected)
    read, n = tokenizer.reader(state), tokenizer.manifest.num_tokens
    cuts = [(0, 5), (5, 17), (17, n)]
    for start, stop in cuts:
        assert torch.equal(read(start, stop), expected[start:stop])
    pieces = [(start, expected[start:stop]) for start, stop in reversed(cuts)]
    _assert_equal(tokenizer.decode_pieces(pieces), tokenizer.decode(expected))


def test_keys_shifted_by_dropout_are_renamed_and_bad_files_refused(trained_store, tmp_path):
    tokenizer = trained_store.tokenizer
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
        read_state_dict(evil)


def test_a_store_whose_zoo_is_gone_pretrains_a_run_that_embeds(trained_store, tmp_path):
    copy = shutil.copytree(trained_store.path, tmp_path / "store")  # its zoo is not beside it
    assert not TokenStore.open(copy).zoo_path.exists()
    checkpoint = Zoo.open(trained_store.zoo_path).load_checkpoint("m0001", 3)
    config = PretrainConfig(preset="tiny", epochs=1, batch_size=8,
                            model={"d_model": 32, "n_layers": 1})
    model = pretrain(copy, tmp_path / "run", config, progress=False).model
    expected = sane.Pipeline(model, trained_store.tokenizer).embed([checkpoint])
    np.testing.assert_array_equal(Pipeline.from_pretrained(tmp_path / "run").embed([checkpoint]),
                                  expected)
    with pytest.raises(FormatError, match="holds no tokenizer"):
        Tokenizer.from_pretrained(tmp_path)
