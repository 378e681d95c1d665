"""Tokenizer: bit-exact round trips over random architectures, the token layout, known token
counts of the zoo architectures, batch-norm handling, manifests and bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from sane.errors import ConfigError, FormatError
from sane.weights import TokenManifest, detokenize, make_manifest, tokenize
from sane.weights.token_ranges import detokenize_pieces, token_reader
from sane.weights.tokenize import tokenize_into
from sane.zoo.architectures import ArchConfig, build_model

BITS = {2: torch.int16, 4: torch.int32, 8: torch.int64}
FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def assert_bitwise_equal(a: torch.Tensor, b: torch.Tensor, key: str = "") -> None:
    """Same dtype, shape and bits (so -0.0 differs from 0.0)."""
    assert a.dtype == b.dtype and a.shape == b.shape, key
    if a.is_floating_point():
        bits = BITS[a.element_size()]
        a, b = a.contiguous().view(bits), b.contiguous().view(bits)
    assert torch.equal(a, b), key


def assert_state_dicts_equal(a: dict, b: dict) -> None:
    assert list(a) == list(b)
    for key in a:
        assert_bitwise_equal(a[key], b[key], key)


class Odd(nn.Module):
    """Entries no standard layer has: a 0-d scale, a bias without weight, a weight whose
    would-be bias has the wrong length, an integer buffer and an empty buffer."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))
        self.bias = nn.Parameter(torch.zeros(c))
        self.gain_weight = nn.Parameter(torch.ones(c, 2))
        self.gain_bias = nn.Parameter(torch.zeros(c + 1))
        self.register_buffer("steps", torch.zeros(c, dtype=torch.int64))
        self.register_buffer("empty", torch.zeros(0, 3))


def _module(kind: str, c_in: int, c_out: int, k: int, flag: bool, other: bool) -> nn.Module:
    match kind:
        case "linear":
            return nn.Linear(c_in, c_out, bias=flag)
        case "conv1d":
            return nn.Conv1d(c_in, c_out, k, bias=flag)
        case "conv2d":
            return nn.Conv2d(c_in, c_out, k, bias=flag)
        case "conv3d":
            return nn.Conv3d(c_in, c_out, k, bias=flag)
        case "embedding":
            return nn.Embedding(c_in + 1, c_out)
        case "layernorm":
            return nn.LayerNorm((c_in, c_out) if other else c_out, elementwise_affine=flag)
        case "groupnorm":
            return nn.GroupNorm(1, c_out, affine=flag)
        case "batchnorm1d":
            return nn.BatchNorm1d(c_out, affine=flag, track_running_stats=other)
        case "batchnorm2d":
            return nn.BatchNorm2d(c_out, affine=flag, track_running_stats=other)
        case "batchnorm3d":
            return nn.BatchNorm3d(c_out, affine=flag, track_running_stats=other)
        case "attention":
            return nn.MultiheadAttention(c_out, 1, bias=flag)
        case "prelu":
            return nn.PReLU(c_out)
        case _:
            return Odd(c_out)


KINDS = ("linear", "conv1d", "conv2d", "conv3d", "embedding", "layernorm", "groupnorm",
         "batchnorm1d", "batchnorm2d", "batchnorm3d", "attention", "prelu", "odd")
# Names that fool substring rules: a batch norm called "foo", a convolution called "bn_conv".
NAMES = ("foo", "bn", "bn_conv", "conv", "downsample", "norm", "fc")


@st.composite
def architectures(draw: st.DrawFn) -> nn.Module:
    modules = nn.ModuleDict()
    for i in range(draw(st.integers(1, 4))):
        module = _module(draw(st.sampled_from(KINDS)), draw(st.integers(1, 4)),
                         draw(st.integers(1, 4)), draw(st.integers(1, 3)), draw(st.booleans()),
                         draw(st.booleans()))
        if draw(st.booleans()):
            module = nn.Sequential(nn.Identity(), module)  # a deeper key prefix
        modules[f"{draw(st.sampled_from(NAMES))}{i}"] = module
    modules["fc"] = nn.Linear(2, 3, bias=draw(st.booleans()))  # always something to tokenize
    return modules


def random_state_dict(model: nn.Module, seed: int, dtype: str) -> dict[str, torch.Tensor]:
    """Random values over several orders of magnitude, with -0.0 and a subnormal mixed in;
    ``dtype="mixed"`` picks a floating dtype per tensor."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for key, t in model.state_dict().items():
        if not t.is_floating_point():
            out[key] = torch.randint(0, 100, t.shape, generator=g, dtype=t.dtype)
            continue
        scale = 10.0 ** torch.randint(-3, 4, (), generator=g).item()
        x = torch.randn(t.shape, generator=g, dtype=torch.float64) * scale
        target = (FLOATS[int(torch.randint(4, (), generator=g))] if dtype == "mixed"
                  else getattr(torch, dtype))
        x = x.to(target)
        if x.numel() > 1:
            x.view(-1)[0] = -0.0
            x.view(-1)[1] = torch.finfo(target).smallest_normal / 2
        out[key] = x
    return out


def batchnorm_keys(model: nn.Module, tracking_only: bool = False) -> set[str]:
    """Keys of batch-norm modules found by type (optionally only those with running stats)."""
    keys = set()
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            if tracking_only and not m.track_running_stats:
                continue
            keys |= {f"{name}.{leaf}" for leaf in m.state_dict()}
    return keys


@settings(max_examples=80, deadline=None)
@given(
    model=architectures(),
    seed=st.integers(0, 2**31 - 1),
    dtype=st.sampled_from(["float16", "bfloat16", "float32", "float64", "mixed"]),
    token_size=st.one_of(st.none(), st.integers(1, 40)),
    use_model=st.booleans(),
    include_batchnorm=st.booleans(),
)
def test_round_trip_and_layout_on_random_architectures(
    model, seed, dtype, token_size, use_model, include_batchnorm
):
    sd = random_state_dict(model, seed, dtype)
    out = tokenize(sd, token_size, model=model if use_model else None,
                   include_batchnorm=include_batchnorm)
    m = out.manifest

    assert_state_dicts_equal(detokenize(out.tokens, m, out.rest), sd)
    assert TokenManifest.from_dict(json.loads(json.dumps(m.to_dict()))) == m

    # Which entries were kept out: batch norm (found by type with the model, by running stats
    # without it) unless included, num_batches_tracked always, non-floating and empty tensors.
    bn = batchnorm_keys(model, tracking_only=not use_model)
    expected_rest = {k for k in bn if not include_batchnorm or k.endswith("num_batches_tracked")}
    expected_rest |= {k for k, t in sd.items() if not t.is_floating_point() or t.numel() == 0}
    assert set(out.rest) == expected_rest == {e.key for e in m.excluded}

    tokenized = [sd[k] for k in m.tokenized_keys()]
    assert sorted(m.tokenized_keys()) == sorted(set(sd) - expected_rest)
    wide = any(t.dtype == torch.float64 for t in tokenized)
    assert out.tokens.dtype == (torch.float64 if wide else torch.float32)
    if token_size is None:
        assert m.token_size == max(ly.row_length for ly in m.layers)
    else:
        assert m.token_size == token_size

    # The real values, read in token order, are each layer's rows: weights, then the bias.
    rows = []
    for ly in m.layers:
        row = [sd[ly.weight_key].reshape(ly.rows, -1).double()]
        if ly.bias_key is not None:
            row.append(sd[ly.bias_key].double()[:, None])
        rows.append(torch.cat(row, dim=1).flatten())
    assert torch.equal(out.tokens[out.mask].double(), torch.cat(rows))
    assert not out.tokens[~out.mask].any()
    assert out.mask.sum() == sum(t.numel() for t in tokenized)

    # Positions (n, l, k): n counts tokens, layer l spans [start, stop), row k repeats per chunk.
    pos = out.positions
    assert pos.dtype == torch.int64 and pos.shape == (m.num_tokens, 3)
    assert torch.equal(pos[:, 0], torch.arange(m.num_tokens))
    chunks = m.chunks()
    for index, ly in enumerate(m.layers):
        span = slice(ly.start, ly.stop)
        assert (pos[span, 1] == index).all()
        assert torch.equal(pos[span, 2], torch.arange(ly.rows).repeat_interleave(ly.tokens_per_row))
        assert torch.equal(chunks[span], torch.arange(ly.tokens_per_row).repeat(ly.rows))

    into = np.full((m.num_tokens, m.token_size), 7.0, dtype=np.float64)
    tokenize_into(sd, m, into)
    assert torch.equal(torch.from_numpy(into), out.tokens.double())


@settings(max_examples=60, deadline=None)
@given(
    model=architectures(),
    seed=st.integers(0, 2**31 - 1),
    dtype=st.sampled_from(["float16", "float32", "float64", "mixed"]),
    token_size=st.integers(1, 12),
    data=st.data(),
)
def test_token_ranges_read_and_write_like_the_whole_sequence(model, seed, dtype, token_size,
                                                              data):
    # Ranges cut rows anywhere (tokens of up to 12 values split most rows in several).
    sd = random_state_dict(model, seed, dtype)
    out = tokenize(sd, token_size, model=model)
    n = out.manifest.num_tokens
    cuts = sorted(data.draw(st.sets(st.integers(1, max(n - 1, 1)), max_size=8)) - {n})
    ranges = list(zip([0, *cuts], [*cuts, n]))
    read = token_reader(sd, out.manifest)
    for start, stop in ranges:
        assert_bitwise_equal(read(start, stop), out.tokens[start:stop])
    order = data.draw(st.permutations(ranges))
    pieces = [(start, out.tokens[start:stop]) for start, stop in order]
    assert_state_dicts_equal(detokenize_pieces(pieces, out.manifest, out.rest), sd)


def test_token_pieces_are_transformed_and_written_into_given_tensors():
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    out = tokenize(model.state_dict(), 3)  # batch norm kept out of the tokens
    target = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    target[1].running_mean.fill_(7.0)
    own = target.state_dict()
    pieces = [(0, out.tokens[:5]), (5, out.tokens[5:])]
    written = detokenize_pieces(pieces, out.manifest, transform=lambda key, x: 2 * x + 1,
                                out=own)
    state = target.state_dict()
    for key in out.manifest.tokenized_keys():
        assert written[key] is own[key]  # the module's own tensors, filled in place
        assert torch.equal(state[key], 2 * model.state_dict()[key] + 1), key
    assert torch.equal(state["1.running_mean"], torch.zeros(4))  # a fresh module's, not 7
    bad = {**own, "0.weight": torch.zeros(3, 4)}
    with pytest.raises(FormatError, match=r"out\['0.weight'\] must be a tensor \[4, 3\] "
                       r"torch.float32, got \[3, 4\] torch.float32"):
        detokenize_pieces(pieces, out.manifest, out=bad)


def test_token_pieces_must_tile_the_sequence_and_be_finite():
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    out = tokenize(model.state_dict(), 3)  # rows of 4 and 5 values: 2 tokens each, 12 tokens
    t = out.tokens
    for pieces in ([(0, t[:5])], [(0, t[:6]), (5, t[5:])], [(0, t), (3, t[3:4])], []):
        with pytest.raises(FormatError, match=r"cover \[0, 12\) exactly once"):
            detokenize_pieces(pieces, out.manifest)
    with pytest.raises(FormatError, match=r"outside \[0, 12\)"):
        detokenize_pieces([(10, t[:5])], out.manifest)
    with pytest.raises(FormatError, match=r"pieces must be tensors \[length, 3\]"):
        detokenize_pieces([(0, t[:, :2])], out.manifest)
    bad = t[6:].clone()
    bad[2, 1] = float("inf")
    with pytest.raises(FormatError, match=r"1 non-finite values \(first at token 8, column 1"):
        detokenize_pieces([(0, t[:6]), (6, bad)], out.manifest)
    with pytest.raises(FormatError, match=r"outside \[0, 12\)"):
        token_reader(model.state_dict(), out.manifest)(4, 13)
    broken = {**model.state_dict(), "1.bias": torch.tensor([0.0, float("nan")])}
    with pytest.raises(FormatError, match=r"'1.bias' holds non-finite"):
        token_reader(broken, out.manifest)


def test_cnn_s_known_counts():
    for dropout in (0.0, 0.5):  # dropout modules shift the keys, not the tokens
        sd = build_model(ArchConfig(name="cnn_s", dropout=dropout), seed=0).state_dict()
        out = tokenize(sd)
        assert out.tokens.shape == (48, 201)
        assert [ly.row_length for ly in out.manifest.layers] == [26, 201, 25, 37, 21]
        assert_state_dicts_equal(detokenize(out.tokens, out.manifest, out.rest), sd)


def test_cnn_l_known_counts():
    sd = build_model(ArchConfig(name="cnn_l", in_channels=3, input_size=32), seed=0).state_dict()
    manifest = make_manifest(sd)
    assert (manifest.num_tokens, manifest.token_size) == (93, 289)


@pytest.fixture(scope="module")
def resnet18() -> nn.Module:
    return build_model(ArchConfig(name="resnet18", in_channels=3, input_size=32), seed=0)


def test_resnet18_known_counts(resnet18):
    sd = resnet18.state_dict()
    assert make_manifest(sd, 288).num_tokens == 39_124
    assert make_manifest(sd, 288, model=resnet18).num_tokens == 39_124
    assert make_manifest(sd, 288, include_batchnorm=True).num_tokens == 53_524
    assert make_manifest(sd, 288, model=resnet18, include_batchnorm=True).num_tokens == 53_524
    cifar100 = build_model(ArchConfig(name="resnet18", in_channels=3, input_size=32,
                                      num_classes=100), seed=0)
    assert make_manifest(cifar100.state_dict(), 288, include_batchnorm=True).num_tokens == 53_704
    # Automatic token size: the longest row is a bias-free 3×3 convolution with 512 inputs.
    assert make_manifest(sd).token_size == 512 * 3 * 3


def test_resnet18_round_trip_with_batchnorm(resnet18):
    sd = resnet18.state_dict()
    out = tokenize(sd, 288, model=resnet18, include_batchnorm=True)
    assert out.tokens.shape == (53_524, 288)
    assert set(out.rest) == {k for k in sd if k.endswith("num_batches_tracked")}
    assert_state_dicts_equal(detokenize(out.tokens, out.manifest, out.rest), sd)


def test_resnet50_known_counts_and_round_trip():
    # Bottleneck blocks: 53 convolutions + fc, every row at most 2,049 values (fc with bias).
    model = build_model(ArchConfig(name="resnet50", in_channels=3, input_size=32), seed=0)
    sd = model.state_dict()
    out = tokenize(sd, 288, model=model)
    assert out.tokens.shape == (88_656, 288) and len(out.manifest.layers) == 54
    assert_state_dicts_equal(detokenize(out.tokens, out.manifest, out.rest), sd)


def test_token_size_discovery_includes_bias_free_layers():
    # The reference code only looked at layers with a bias: it would pick 6 here, not 27.
    model = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.Flatten(), nn.Linear(5, 2))
    manifest = make_manifest(model.state_dict())
    assert manifest.token_size == 27
    assert [ly.tokens_per_row for ly in manifest.layers] == [1, 1]


def test_long_rows_split_into_consecutive_zero_padded_tokens():
    layer = nn.Linear(7, 2)
    with torch.no_grad():
        layer.weight.copy_(torch.arange(1.0, 15.0).reshape(2, 7))
        layer.bias.copy_(torch.tensor([-1.0, -2.0]))
    out = tokenize(layer.state_dict(), token_size=3)
    expected = torch.tensor([[1, 2, 3], [4, 5, 6], [7, -1, 0],
                             [8, 9, 10], [11, 12, 13], [14, -2, 0]], dtype=torch.float32)
    assert torch.equal(out.tokens, expected)
    assert torch.equal(out.mask, expected != 0)
    assert out.positions.tolist() == [[0, 0, 0], [1, 0, 0], [2, 0, 0],
                                      [3, 0, 1], [4, 0, 1], [5, 0, 1]]
    assert out.manifest.chunks().tolist() == [0, 1, 2, 0, 1, 2]


def test_pairing_rule():
    model = nn.ModuleDict({"attn": nn.MultiheadAttention(4, 2), "odd": Odd(3)})
    manifest = make_manifest(model.state_dict())
    pairs = {ly.weight_key: ly.bias_key for ly in manifest.layers}
    assert pairs == {
        "attn.in_proj_weight": "attn.in_proj_bias",  # weight -> bias inside the leaf name
        "attn.out_proj.weight": "attn.out_proj.bias",
        "odd.scale": None,  # 0-d: one row of one value
        "odd.bias": None,  # a bias without a weight: three rows of one value
        "odd.gain_weight": None,  # its sibling "gain_bias" has 4 values for 3 rows
        "odd.gain_bias": None,
    }
    rows = {ly.weight_key: (ly.rows, ly.row_length) for ly in manifest.layers}
    assert rows["odd.scale"] == (1, 1) and rows["odd.bias"] == (3, 1)
    assert rows["attn.in_proj_weight"] == (12, 5)
    assert {e.key: e.reason for e in manifest.excluded} == {
        "odd.steps": "not floating point", "odd.empty": "empty"}


def test_root_level_weight_and_bias_pair():
    manifest = make_manifest(nn.Linear(3, 2).state_dict())
    assert [(ly.weight_key, ly.bias_key, ly.row_length) for ly in manifest.layers] == [
        ("weight", "bias", 4)]


class MyNorm(nn.BatchNorm2d):
    """A batch-norm subclass, recognised by type."""


def test_batchnorm_identified_by_type_not_by_name():
    model = nn.ModuleDict({"foo": nn.BatchNorm2d(3), "bn_conv": nn.Conv2d(3, 4, 1),
                           "bar": MyNorm(4), "bn": nn.LayerNorm(4)})
    sd = model.state_dict()
    for manifest in (make_manifest(sd, model=model), make_manifest(sd)):
        assert {e.key for e in manifest.excluded} == batchnorm_keys(model)
        assert manifest.tokenized_keys() == ("bn_conv.weight", "bn_conv.bias", "bn.weight",
                                             "bn.bias")


def test_batchnorm_without_running_stats_needs_the_model():
    model = nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3, track_running_stats=False))
    sd = model.state_dict()
    assert {e.key for e in make_manifest(sd, model=model).excluded} == {"1.weight", "1.bias"}
    # Without the model nothing marks it as batch norm: a weight/bias pair like layer norm's.
    assert make_manifest(sd).excluded == ()


def test_included_batchnorm_gives_three_layers():
    model = nn.Sequential(nn.Conv2d(2, 5, 1), nn.BatchNorm2d(5), nn.BatchNorm2d(2, affine=False))
    manifest = make_manifest(model.state_dict(), model=model, include_batchnorm=True)
    layout = [(ly.weight_key, ly.bias_key, ly.rows, ly.row_length) for ly in manifest.layers]
    assert layout == [
        ("0.weight", "0.bias", 5, 3),
        ("1.weight", "1.bias", 5, 2),
        ("1.running_mean", None, 5, 1),
        ("1.running_var", None, 5, 1),
        ("2.running_mean", None, 2, 1),
        ("2.running_var", None, 2, 1),
    ]
    assert {e.key for e in manifest.excluded} == {"1.num_batches_tracked",
                                                  "2.num_batches_tracked"}


def test_detokenize_without_rest_fills_fresh_batchnorm_values():
    model = nn.Sequential(nn.Conv2d(2, 3, 1), nn.BatchNorm2d(3))
    sd = random_state_dict(model, seed=1, dtype="float32")
    out = tokenize(sd, model=model)
    back = detokenize(out.tokens, out.manifest)
    assert_state_dicts_equal({k: back[k] for k in ("0.weight", "0.bias")},
                             {k: sd[k] for k in ("0.weight", "0.bias")})
    fresh = nn.BatchNorm2d(3).state_dict()
    assert_state_dicts_equal({k: v for k, v in back.items() if k.startswith("1.")},
                             {f"1.{k}": v for k, v in fresh.items()})


def test_detokenize_without_rest_refuses_other_excluded_tensors():
    out = tokenize(Odd(2).state_dict())
    with pytest.raises(FormatError, match=r"'steps'.*rest"):
        detokenize(out.tokens, out.manifest)


def test_detokenize_ignores_padding_and_rounds_to_the_original_dtype():
    model = nn.Linear(3, 2).to(torch.float16)
    out = tokenize(model.state_dict(), token_size=3)
    decoded = out.tokens + 1e-3  # decoder output: off-grid values, non-zero padding
    back = detokenize(decoded, out.manifest, out.rest)
    assert back["weight"].dtype == torch.float16
    assert torch.equal(back["weight"], (model.weight.float() + 1e-3).half())
    assert torch.equal(back["bias"], (model.bias.float() + 1e-3).half())


def test_detokenized_tensors_do_not_share_memory_with_tokens():
    out = tokenize(nn.Linear(3, 2).state_dict())
    back = detokenize(out.tokens, out.manifest)
    expected = back["weight"].clone()
    out.tokens.zero_()
    assert torch.equal(back["weight"], expected)


def test_tokenize_into_a_preallocated_store():
    models = [build_model(ArchConfig(name="cnn_s"), seed=s).state_dict() for s in range(3)]
    manifest = make_manifest(models[0])
    store = np.ones((3, manifest.num_tokens, manifest.token_size), dtype=np.float32)
    for m, sd in enumerate(models):
        tokenize_into(sd, manifest, store[m])
    store.flags.writeable = False  # as read back from a read-only memory map
    for m, sd in enumerate(models):
        assert np.array_equal(store[m], tokenize(sd).tokens.numpy())
        assert_state_dicts_equal(detokenize(store[m], manifest), sd)


def test_bad_token_sizes():
    sd = nn.Linear(3, 2).state_dict()
    for bad in (0, -2, 2.5, True, "4"):
        with pytest.raises(ConfigError, match="token_size"):
            tokenize(sd, bad)


def test_bad_state_dicts():
    with pytest.raises(FormatError, match="mapping"):
        tokenize([torch.ones(2)])
    with pytest.raises(FormatError, match=r"'w'.*tensor"):
        tokenize({"w": [1.0, 2.0]})
    with pytest.raises(FormatError, match="no non-empty floating-point tensor"):
        tokenize({"steps": torch.zeros(3, dtype=torch.int64)})
    with pytest.raises(FormatError, match=r"'0.weight'.*non-finite"):
        tokenize({"0.weight": torch.tensor([[1.0, float("nan")]])})
    model = nn.Linear(3, 2)
    with pytest.raises(FormatError, match="does not belong to the model"):
        tokenize(nn.Linear(3, 2, bias=False).state_dict(), model=model)


def test_tokenize_into_checks_architecture_and_output():
    manifest = make_manifest(nn.Linear(3, 2).state_dict())
    with pytest.raises(FormatError, match=r"'weight'.*shape \[2, 3\]"):
        tokenize_into(nn.Linear(4, 2).state_dict(), manifest, torch.empty(2, 4))
    with pytest.raises(FormatError, match=r"'weight'.*dtype float32"):
        tokenize_into(nn.Linear(3, 2).double().state_dict(), manifest, torch.empty(2, 4))
    with pytest.raises(FormatError, match=r"shape \[2, 4\]"):
        tokenize_into(nn.Linear(3, 2).state_dict(), manifest, torch.empty(3, 4))
    frozen = np.zeros((2, 4), dtype=np.float32)
    frozen.flags.writeable = False
    with pytest.raises(FormatError, match="read-only"):
        tokenize_into(nn.Linear(3, 2).state_dict(), manifest, frozen)


def test_detokenize_rejects_bad_tokens_and_rest():
    out = tokenize(nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2)).state_dict())
    with pytest.raises(FormatError, match=r"shape \[2, 4\]"):
        detokenize(out.tokens[:1], out.manifest, out.rest)
    bad = out.tokens.clone()
    bad[1, 2] = float("inf")
    with pytest.raises(FormatError, match=r"non-finite.*token 1, column 2"):
        detokenize(bad, out.manifest, out.rest)
    with pytest.raises(FormatError, match="floating"):
        detokenize(out.tokens.long(), out.manifest, out.rest)
    with pytest.raises(FormatError, match=r"rest\['1.running_var'\].*shape \[2\]"):
        detokenize(out.tokens, out.manifest, {**out.rest, "1.running_var": torch.ones(3)})
    with pytest.raises(FormatError, match="does not exclude"):
        detokenize(out.tokens, out.manifest, {**out.rest, "extra": torch.ones(1)})


def test_manifest_validation_on_load():
    good = make_manifest(nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 2)).state_dict(), 2)
    d = good.to_dict()

    def broken(change) -> dict:
        bad = json.loads(json.dumps(d))
        change(bad)
        return bad

    cases = {
        "starts at token": lambda b: b["layers"][1].update(start=5),
        "tokens_per_row": lambda b: b["layers"][0].update(tokens_per_row=1),
        "rows of": lambda b: b["layers"][0].update(weight_shape=[2, 4]),
        "num_tokens": lambda b: b.update(num_tokens=7),
        "exactly one layer": lambda b: b["keys"].append("ghost"),
        "sane-tokens": lambda b: b.update(format="other"),
        "malformed.*layers": lambda b: b.pop("layers"),
        "integer": lambda b: b.update(token_size="2"),
        "dtypes": lambda b: b["layers"][0].update(weight_dtype="int64"),
        "unknown dtype": lambda b: b["excluded"].append(
            {"key": "x", "shape": [], "dtype": "float99", "reason": "r", "fill": None}),
    }
    for message, change in cases.items():
        with pytest.raises(FormatError, match=message):
            TokenManifest.from_dict(broken(change))
    assert TokenManifest.from_dict(d) == good


def test_tokenize_into_reports_overflow_of_a_narrow_out():
    sd = {"w": torch.tensor([[1e300, 1.0]], dtype=torch.float64)}
    with pytest.raises(FormatError, match=r"overflow the torch\.float32 of out"):
        tokenize_into(sd, make_manifest(sd), torch.empty(1, 2))
