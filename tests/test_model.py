"""The SANE autoencoder: shapes, seeded initialization, position ranges, save/load, losses."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import save_file

from sane.errors import ConfigError, FormatError
from sane.model import SANE, SANEConfig, masked_mse, nt_xent, sane_loss, squared_sums
from sane.model.sane import inference_precision

CONFIG = SANEConfig(token_size=7, max_positions=(40, 5, 9), d_model=32, n_heads=4,
                    n_layers=2, d_latent=6, window_size=10, projection_dim=5)


def windows(b: int, w: int, config: SANEConfig = CONFIG, seed: int = 0, start: int = 0):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randn(b, w, config.token_size, generator=g)
    n = torch.arange(start, start + w).expand(b, w)
    positions = torch.stack([n, n % config.max_positions[1], n % config.max_positions[2]], -1)
    return tokens, positions


def test_shapes_of_encode_decode_and_project():
    model = SANE(CONFIG)
    tokens, positions = windows(3, 10)
    z, reconstruction, projection = model(tokens, positions)
    assert z.shape == (3, 10, 6) and reconstruction.shape == (3, 10, 7)
    assert projection.shape == (3, 5)
    tokens, positions = windows(2, 25, start=15)  # any length within the position range
    assert model.decode(model.encode(tokens, positions), positions).shape == (2, 25, 7)


def test_latent_noise_reaches_only_the_decoder():
    model = SANE(CONFIG).eval()  # no dropout: the only randomness is the latent noise
    tokens, positions = windows(4, 10)
    with torch.no_grad():
        z, clean, projection = model(tokens, positions)
        torch.manual_seed(0)
        z2, noised, projection2 = model(tokens, positions, latent_noise=0.5)
        torch.manual_seed(0)
        _, again, _ = model(tokens, positions, latent_noise=0.5)
    assert torch.equal(z, z2) and torch.equal(projection, projection2)
    assert torch.equal(clean, model.decode(z, positions))
    assert not torch.allclose(noised, clean) and torch.equal(noised, again)
    # Each window's noise scale is drawn on its own: windows are noised by different amounts.
    spread = [float((n - c).abs().mean()) for n, c in zip(noised, clean)]
    assert len({round(v, 6) for v in spread}) == 4


def test_attention_sees_the_whole_window():
    model = SANE(CONFIG).eval()
    tokens, positions = windows(1, 10)
    changed = tokens.clone()
    changed[0, -1] += 1.0
    with torch.no_grad():  # the last token's change reaches the first token's latent
        assert not torch.allclose(model.encode(tokens, positions)[0, 0],
                                  model.encode(changed, positions)[0, 0])


def test_initialization_is_seeded_and_leaves_the_global_rng_alone():
    state = torch.get_rng_state()
    a, b, c = SANE(CONFIG, seed=1), SANE(CONFIG, seed=1), SANE(CONFIG, seed=2)
    assert torch.equal(torch.get_rng_state(), state)
    for (key, pa), pb, pc in zip(a.state_dict().items(), b.state_dict().values(),
                                 c.state_dict().values()):
        assert torch.equal(pa, pb), key
        if pa.ndim >= 2:
            assert not torch.equal(pa, pc), key
    # GPT-2 scaling: residual projections N(0, 0.02 / sqrt(2 · layers)), the rest N(0, 0.02).
    assert a.encoder[0].attn.qkv.weight.std().item() == pytest.approx(0.02, rel=0.1)
    assert a.decoder[1].mlp.proj.weight.std().item() == pytest.approx(0.02 / 2, rel=0.1)


def test_bad_inputs_name_what_was_expected():
    model = SANE(CONFIG)
    tokens, positions = windows(2, 10)
    with pytest.raises(FormatError, match=r"tokens must be \[B, W, 7\]"):
        model.encode(tokens[..., :5], positions)
    with pytest.raises(FormatError, match="outside this model's range"):
        model.encode(*windows(2, 10, start=35))
    with pytest.raises(FormatError, match="do not match"):
        model.encode(tokens, positions[:, :4])
    with pytest.raises(FormatError, match="must be integers"):
        model.encode(tokens, positions.float())
    with pytest.raises(FormatError, match="windows of 10 tokens"):
        model.project(model.encode(*windows(2, 12)))


@pytest.mark.parametrize(("change", "message"), [
    ({"d_model": 30}, "divisible by n_heads"),
    ({"n_layers": 0}, "n_layers must be a positive integer"),
    ({"max_positions": (4, 5)}, "three positive integers"),
    ({"dropout": 1.0}, r"dropout must be in \[0, 1\)"),
])
def test_config_validation(change, message):
    with pytest.raises(ConfigError, match=message):
        SANEConfig(**{**CONFIG.to_dict(), **change})


def test_save_and_from_pretrained_round_trip(tmp_path):
    model = SANE(CONFIG, seed=3).eval()
    model.save_pretrained(tmp_path)
    loaded = SANE.from_pretrained(tmp_path)
    assert loaded.config == CONFIG and not loaded.training
    tokens, positions = windows(2, 10)
    with torch.no_grad():
        for a, b in zip(model(tokens, positions), loaded(tokens, positions)):
            assert torch.equal(a, b)


def test_whole_model_methods_run_in_the_model_s_precision(tmp_path):
    model = SANE(CONFIG, seed=3).eval()
    tokens, positions = windows(2, 37)
    with torch.no_grad():
        fp32 = model.encode_sequence(tokens, positions[0])
        model.precision = "bf16"  # autocast: bfloat16 matmuls, float32 out
        bf16 = model.encode_sequence(tokens, positions[0])
        decoded = model.decode_sequence(bf16, positions[0])
    assert bf16.dtype == decoded.dtype == torch.float32
    assert not torch.equal(bf16, fp32)
    torch.testing.assert_close(bf16, fp32, rtol=0.05, atol=0.05)
    model.precision = "fp16"
    with pytest.raises(ConfigError, match=r"SANE\.precision must be fp32 or bf16, got 'fp16'"):
        model.encode_sequence(tokens, positions[0])

    model.save_pretrained(tmp_path)
    assert SANE.from_pretrained(tmp_path).precision == "fp32"  # auto on a CPU
    assert SANE.from_pretrained(tmp_path, precision="bf16").precision == "bf16"
    assert inference_precision("auto", "cpu") == "fp32"
    with pytest.raises(ConfigError, match="precision must be one of auto, fp32, bf16, got 'x'"):
        SANE.from_pretrained(tmp_path, precision="x")
    with pytest.raises(ConfigError, match="'gpu' is not a torch device"):
        SANE.from_pretrained(tmp_path, device="gpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="device 'cuda': this torch sees no CUDA device"):
            SANE.from_pretrained(tmp_path, device="cuda")


def test_from_pretrained_rejects_bad_files(tmp_path):
    with pytest.raises(FormatError, match=r"sane\.json not found"):
        SANE.from_pretrained(tmp_path)
    model = SANE(CONFIG)
    model.save_pretrained(tmp_path)
    state = model.state_dict()
    save_file({**state, "to_latent.bias": torch.full((6,), math.nan)},
              str(tmp_path / "model.safetensors"))
    with pytest.raises(FormatError, match=r"to_latent\.bias holds NaN"):
        SANE.from_pretrained(tmp_path)
    save_file({**state, "to_latent.bias": torch.zeros(5)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(FormatError, match=r"to_latent.bias is torch.float32 \[5\]"):
        SANE.from_pretrained(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(FormatError, match="unreadable"):
        SANE.from_pretrained(tmp_path)
    meta = json.loads((tmp_path / "sane.json").read_text())
    (tmp_path / "sane.json").write_text(json.dumps({**meta, "version": 2}))
    with pytest.raises(FormatError, match="sane-model version 2 is not supported"):
        SANE.from_pretrained(tmp_path)
    meta["config"]["depth"] = 3
    (tmp_path / "sane.json").write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match="unknown key"):
        SANE.from_pretrained(tmp_path)


def test_masked_mse_counts_real_values_only():
    target = torch.tensor([[1.0, 2.0, 0.0], [3.0, 0.0, 0.0]])
    mask = torch.tensor([[True, True, False], [True, False, False]])
    prediction = torch.tensor([[2.0, 2.0, 9.0], [1.0, -7.0, 5.0]])
    assert masked_mse(prediction, target, mask).item() == pytest.approx((1 + 0 + 4) / 3)
    views = torch.stack([prediction, target])  # the mask broadcasts over views
    assert masked_mse(views, torch.stack([target, target]), mask).item() == pytest.approx(5 / 6)
    with pytest.raises(FormatError, match="selects no real values"):
        masked_mse(prediction, target, torch.zeros_like(mask))


def test_squared_sums_known_values():
    target = torch.tensor([1.0, 2.0, 3.0, 4.0, 9.0])
    mask = torch.tensor([True, True, True, True, False])
    sse, sst = squared_sums(torch.tensor([1.0, 2.0, 3.0, 6.0, 0.0]), target, mask)
    assert (sse.item(), sst.item()) == (4.0, 5.0)  # SST about the real values' mean 2.5


def test_nt_xent_matches_its_definition():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g)
    z = torch.nn.functional.normalize(torch.cat([a, b]), dim=1)
    sim = z @ z.T / 0.5
    expected = 0.0
    for i in range(8):
        positive = (i + 4) % 8
        others = [j for j in range(8) if j != i]
        expected -= sim[i, positive] - torch.logsumexp(sim[i, others], 0)
    assert nt_xent(a, b, 0.5).item() == pytest.approx(expected.item() / 8, rel=1e-6)
    # Views that agree score lower than views that do not.
    assert nt_xent(a, a + 0.01, 0.1) < nt_xent(a, b, 0.1)
    with pytest.raises(FormatError, match="B >= 2"):
        nt_xent(a[:1], b[:1], 0.1)


def test_sane_loss_mixes_with_gamma():
    g = torch.Generator().manual_seed(1)
    y, t = torch.randn(2, 4, 5, generator=g), torch.randn(2, 4, 5, generator=g)
    mask = torch.ones(4, 5, dtype=torch.bool)
    p = (torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g))
    out = sane_loss(y, t, mask, p, gamma=0.25, temperature=0.1)
    assert out["loss"] == pytest.approx(0.75 * out["reconstruction"] + 0.25 * out["contrast"])
    assert out["reconstruction"] == masked_mse(y, t, mask)
    assert sane_loss(y, t, mask, p, gamma=0.0, temperature=0.1)["loss"] == out["reconstruction"]
