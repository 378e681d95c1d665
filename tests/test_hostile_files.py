"""Hostile and odd files: every checkpoint a command reads either works or fails with one line
``sane: error: PATH: ...`` saying what was expected; never a traceback, never advice to load a
file unsafely, never a run of what a file holds. Half-precision and wrapped checkpoints work.

A fuzz of damaged and odd checkpoints is fed to ``sane embed``, ``sane probe --predict``,
``sane zoo import`` and ``sane prepare`` (in a zoo, a checkpoint's place is
``models/<id>/epoch_<E>.safetensors``; in a Model Zoos trial, ``checkpoint_<N>/checkpoints``).
"""

from __future__ import annotations

import io
import pathlib
import random
import re
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import save

from sane.checkpoints import MAX_ABS, read_state_dict
from sane.cli import main
from sane.errors import FormatError
from sane.zoo import ArchConfig, Zoo, build_model
from test_modelzoos import published_states, ray_line, ray_params, trial_name, write_trial

UNSAFE_ADVICE = ("weights_only=False", "will likely succeed", "`weights_only` set to `False`")
MARKER = "sane-hostile-payload-ran"  # a file the pickled payload would create


class Payload:
    """Pickles as a call that creates a marker file: it must never run."""

    def __init__(self, marker: pathlib.Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def _torch_bytes(obj: object) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _scaled(state: dict[str, torch.Tensor], **changes) -> dict[str, torch.Tensor]:
    """``state`` with its first weight's first value set, or every weight cast or scaled."""
    out = {k: v.clone() for k, v in state.items()}
    first = next(iter(out))
    if "value" in changes:
        out[first].view(-1)[0] = changes["value"]
    if "dtype" in changes:
        out = {k: v.to(changes["dtype"]) for k, v in out.items()}
    if "factor" in changes:
        out = {k: v * changes["factor"] for k, v in out.items()}
    return out


def hostile(state: dict[str, torch.Tensor], marker: pathlib.Path) -> dict[str, tuple[bytes, str]]:
    """Damaged and odd checkpoints made from ``state``: name -> (file bytes, what the error
    says). ``"UNUSABLE"`` marks finite-less or huge weights, which some commands leave out."""
    rng = random.Random(0)
    noise = rng.randbytes(4096)
    plain = _torch_bytes(state)
    tensors = save(state)
    return {
        "random bytes": (noise, "not a checkpoint (unknown binary content)"),
        "text": (b"epoch 3: loss 0.21\nepoch 4: loss 0.19\n", "not a checkpoint (text)"),
        "empty": (b"", "empty file"),
        "zip magic then noise": (b"PK\x03\x04" + noise, "unreadable checkpoint"),
        "pickle magic then noise": (b"\x80\x02" + noise, "unreadable checkpoint"),
        "safetensors header then noise": ((64).to_bytes(8, "little") + b"{" + noise,
                                          "unreadable checkpoint"),
        "truncated torch file": (plain[:len(plain) // 2], "unreadable checkpoint"),
        "truncated safetensors": (tensors[:len(tensors) // 2], "unreadable checkpoint"),
        "pickled object": (_torch_bytes({**state, "payload": Payload(marker)}),
                           "refused by weights-only loading"),
        "list of tensors": (_torch_bytes(list(state.values())), "expected a state dict"),
        "integer weights": (_torch_bytes(_scaled(state, dtype=torch.int32)), "int32"),
        "NaN": (_torch_bytes(_scaled(state, value=float("nan"))), "UNUSABLE"),
        "infinity": (save(_scaled(state, value=float("inf"))), "UNUSABLE"),
        "weights x 1e30": (_torch_bytes(_scaled(state, factor=1e30)), "UNUSABLE"),
        "float64 beyond float32": (_torch_bytes(_scaled(state, dtype=torch.float64,
                                                        factor=1e300)), "UNUSABLE"),
    }


CASES = list(hostile(build_model(ArchConfig(), seed=0).state_dict(), pathlib.Path(MARKER)))


def unusable_message(name: str, max_abs: float) -> str:
    if name == "weights x 1e30":
        return f"> max_abs = {max_abs:g}"
    return "holds NaN or infinite values"


def one_error_line(capsys, path: pathlib.Path) -> str:
    """The command's one error line (progress bars aside), checked to name ``path``."""
    captured = capsys.readouterr()
    for text in (captured.out, captured.err):
        assert not any(advice in text for advice in UNSAFE_ADVICE)
        assert "Traceback" not in text
    lines = [line for line in re.split(r"[\r\n]", captured.err)
             if line.strip() and "%|" not in line]  # tqdm bars end on \r, each with "%|"
    assert len(lines) == 1 and lines[0].startswith(f"sane: error: {path}: "), lines
    return lines[0]


@pytest.fixture
def zoo_copy(random_store, tmp_path):
    """A copy of the 12-model zoo of :func:`random_store` and the place of one of its
    checkpoints (the last of its model, so that predictions read it too)."""
    zoo = pathlib.Path(shutil.copytree(random_store.zoo_path, tmp_path / "zoo"))
    return zoo, Zoo.open(zoo).checkpoint_path("m003", 2)


@pytest.mark.parametrize("case", CASES)
def test_embed_refuses_a_hostile_checkpoint_in_one_line(case, tiny_run, tmp_path, capsys):
    run, _ = tiny_run
    data, expected = hostile(build_model(ArchConfig(), seed=0).state_dict(),
                             tmp_path / MARKER)[case]
    for suffix in (".pt", ".safetensors"):  # the name says nothing: the bytes decide
        file = tmp_path / f"checkpoint{suffix}"
        file.write_bytes(data)
        assert main(["embed", str(run), str(file), "--out", str(tmp_path / "e.npy")]) == 2
        line = one_error_line(capsys, file)
        assert (unusable_message(case, MAX_ABS) if expected == "UNUSABLE" else expected) in line
    assert not (tmp_path / MARKER).exists() and not (tmp_path / "e.npy").exists()


@pytest.mark.parametrize("case", CASES)
def test_probe_predict_refuses_a_hostile_checkpoint_before_any_work(
        case, tiny_run, zoo_copy, tmp_path, capsys):
    run, _ = tiny_run
    zoo, file = zoo_copy
    data, expected = hostile(read_state_dict(file), tmp_path / MARKER)[case]
    file.write_bytes(data)
    out = tmp_path / "probe"
    assert main(["probe", str(run), "--out", str(out), "--predict", str(zoo)]) == 2
    line = one_error_line(capsys, file)
    assert (unusable_message(case, MAX_ABS) if expected == "UNUSABLE" else expected) in line
    assert not (tmp_path / MARKER).exists() and not out.exists()


@pytest.mark.parametrize("case", CASES)
def test_prepare_refuses_a_hostile_checkpoint_or_leaves_out_unusable_weights(
        case, zoo_copy, tmp_path, capsys):
    zoo, file = zoo_copy
    data, expected = hostile(read_state_dict(file), tmp_path / MARKER)[case]
    file.write_bytes(data)
    status = main(["prepare", str(zoo), "--out", str(tmp_path / "store")])
    assert not (tmp_path / MARKER).exists()
    if expected != "UNUSABLE":  # a zoo with a diverged model is no error: it is left out
        assert status == 2 and expected in one_error_line(capsys, file)
        return
    assert status == 0
    out = capsys.readouterr().out
    assert "35 checkpoints" in out and "left out: 1 checkpoints with " in out
    assert ("above 1e+08" if case == "weights x 1e30" else "non-finite") in out


def _trial(root: pathlib.Path) -> pathlib.Path:
    """A Model Zoos trial of two checkpoints; returns the second's file."""
    params = ray_params(seed=1)
    folder = write_trial(root, trial_name(0, 1), params, published_states("CNN", params,
                                                                          range(2), 1),
                         [ray_line(params, it, {"test_acc": 0.5}) for it in range(2)])
    return folder / "checkpoint_1" / "checkpoints"


@pytest.mark.parametrize("case", CASES)
def test_zoo_import_refuses_or_reports_a_hostile_checkpoint(case, tmp_path, capsys):
    file = _trial(tmp_path / "src")
    data, expected = hostile(torch.load(file, weights_only=True), tmp_path / MARKER)[case]
    file.write_bytes(data)
    expected = (unusable_message(case, 1e4) if expected == "UNUSABLE" else expected)
    assert main(["zoo", "import", str(tmp_path / "src"), "--out", str(tmp_path / "strict"),
                 "--strict"]) == 2
    assert expected in one_error_line(capsys, file)
    # without --strict, the checkpoint is left out and the report says why
    assert main(["zoo", "import", str(tmp_path / "src"), "--out", str(tmp_path / "zoo")]) == 0
    assert f"checkpoint: {file}: " in capsys.readouterr().out
    assert Zoo.open(tmp_path / "zoo").checkpoint_epochs("m00000") == [0]
    assert not (tmp_path / MARKER).exists()


def test_half_precision_and_wrapped_checkpoints_embed_as_float32(tiny_run, tmp_path):
    run, _ = tiny_run
    state = build_model(ArchConfig(), seed=7).state_dict()
    files = {
        "float32.safetensors": save(state),
        "float32.pt": _torch_bytes(state),
        "state_dict.pt": _torch_bytes({"state_dict": state, "epoch": 3}),
        "ddp.pt": _torch_bytes({"model": {f"module.{k}": v for k, v in state.items()},
                                "optimizer": {"lr": torch.tensor(0.1)}}),
        "float64.pt": _torch_bytes({k: v.double() for k, v in state.items()}),
        "float16.pt": _torch_bytes({k: v.half() for k, v in state.items()}),
        "bfloat16.safetensors": save({k: v.bfloat16() for k, v in state.items()}),
        # the same weights rounded, held in float32: what half precision must compute as
        "float16-as-float32.pt": _torch_bytes({k: v.half().float() for k, v in state.items()}),
        "bfloat16-as-float32.pt": _torch_bytes({k: v.bfloat16().float()
                                                for k, v in state.items()}),
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    out = tmp_path / "e.npy"
    assert main(["embed", str(run), *(str(tmp_path / n) for n in files), "--out", str(out),
                 "--permutations", "2"]) == 0
    rows = dict(zip(files, np.load(out)))
    for name in ("float32.pt", "state_dict.pt", "ddp.pt", "float64.pt"):
        np.testing.assert_array_equal(rows[name], rows["float32.safetensors"], err_msg=name)
    for half in ("float16", "bfloat16"):
        key = next(n for n in files if n.startswith(f"{half}."))
        np.testing.assert_array_equal(rows[key], rows[f"{half}-as-float32.pt"])
        np.testing.assert_allclose(rows[key], rows["float32.safetensors"], atol=0.05)


def test_read_state_dict_unwraps_only_what_it_recognizes(tmp_path):
    state = {"a.weight": torch.ones(2, 2), "a.bias": torch.zeros(2)}
    file = tmp_path / "c.pt"
    file.write_bytes(_torch_bytes({"state_dict": {"module.x": torch.ones(1),
                                                  "y": torch.ones(1)}}))
    assert set(read_state_dict(file)) == {"module.x", "y"}  # a prefix only when all share it
    file.write_bytes(_torch_bytes({"weights": state, "epoch": 3}))
    with pytest.raises(FormatError, match=r"or one under 'state_dict' or 'model'; got a dict "
                                          r"with keys \['weights', 'epoch'\]"):
        read_state_dict(file)
    file.write_bytes(_torch_bytes({}))
    with pytest.raises(FormatError, match="holds no tensors"):
        read_state_dict(file)
    with pytest.raises(FormatError, match="checkpoint not found"):
        read_state_dict(tmp_path)


@pytest.mark.parametrize("name", ["sane.json", "model.safetensors", "tokenizer.json",
                                  "tokenizer.safetensors", "ood.json", "ood-SANE.npy"])
@pytest.mark.parametrize("data", [random.Random(1).randbytes(512), b"{}\n", b"[1, 2]", b""],
                         ids=["random bytes", "empty object", "list", "empty"])
def test_a_damaged_file_of_the_run_is_named_in_one_line(name, data, tiny_run, tmp_path, capsys):
    run = pathlib.Path(shutil.copytree(tiny_run[0], tmp_path / "run"))
    (run / name).write_bytes(data)
    checkpoint = tmp_path / "c.safetensors"
    checkpoint.write_bytes(save(build_model(ArchConfig(), seed=0).state_dict()))
    assert main(["embed", str(run), str(checkpoint), "--out", str(tmp_path / "e.npy")]) == 2
    one_error_line(capsys, run / name)
