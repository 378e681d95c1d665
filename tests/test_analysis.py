"""Spectral layer metrics (WeightWatcher-style) and the layer analysis (`sane analyze`)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from sane.cli import main
from sane.downstream.analysis import correlations
from sane.errors import FormatError
from sane.pipeline import Pipeline
from sane.stages.analyze import layer_spreads
from sane.weights.spectral import fit_power_law, layer_metrics, spectrum


def test_spectrum_is_the_squared_singular_values_pooled_over_kernel_positions():
    np.testing.assert_allclose(spectrum(torch.diag(torch.tensor([1.0, 3.0, 2.0]))), [1, 4, 9])
    kernel = torch.randn(6, 4, 3, 3, generator=torch.Generator().manual_seed(0))
    expected = np.sort(np.concatenate([
        torch.linalg.svdvals(kernel[:, :, i, j].double()).numpy() ** 2
        for i in range(3) for j in range(3)]))
    np.testing.assert_allclose(spectrum(kernel), expected)
    assert len(spectrum(torch.zeros(5, 2, 7))) == 7 * 2  # Conv1d: one [5, 2] slice per tap


def test_power_law_fit_recovers_a_known_exponent():
    rng = np.random.default_rng(0)
    pareto = (1 - rng.uniform(size=5000)) ** (-1 / (2.5 - 1))  # p(x) ∝ x^-2.5, x >= 1
    noise = rng.uniform(0.01, 1.0, size=2000)  # a bulk below the tail
    fit = fit_power_law(np.concatenate([pareto, noise]))
    assert fit.alpha == pytest.approx(2.5, abs=0.1)
    assert 0.9 <= fit.xmin <= 2.0 and fit.ks < 0.05


def test_layer_metrics_and_small_spectra():
    g = torch.Generator().manual_seed(1)
    big = layer_metrics(torch.randn(80, 120, generator=g))
    assert big["evals"] == 80 and np.isfinite(big["alpha"])
    top = float(torch.linalg.svdvals(torch.randn(80, 120, generator=torch.Generator()
                                                 .manual_seed(1)).double())[0]) ** 2
    assert big["log_spectral_norm"] == pytest.approx(math.log10(top))
    assert big["alpha_weighted"] == pytest.approx(big["alpha"] * big["log_spectral_norm"])
    small = layer_metrics(torch.randn(10, 20, generator=g))
    assert small["evals"] == 10 and math.isnan(small["alpha"])
    with pytest.raises(FormatError, match="needs a matrix"):
        spectrum(torch.ones(4))
    with pytest.raises(FormatError, match="non-finite"):
        spectrum(torch.full((3, 3), float("nan")))
    with pytest.raises(FormatError, match="all equal"):
        fit_power_law(np.ones(20))


def test_correlations_use_the_finite_rows_only():
    x = np.array([1.0, 2.0, 3.0, np.nan, 5.0])
    y = np.array([2.0, 4.0, 6.0, 8.0, np.nan])
    assert correlations(x, y) == {"pearson": pytest.approx(1.0), "spearman": pytest.approx(1.0),
                                  "checkpoints": 3}
    assert correlations(np.ones(5), y)["pearson"] is None


def test_layer_spreads_are_the_std_over_a_layers_tokens(random_store, tiny_run):
    _, model = tiny_run
    spread = layer_spreads(Pipeline(model, random_store.tokenizer), random_store, batch_size=7,
                           progress=False)
    assert spread.shape == (36, 5)
    with torch.no_grad():
        z = model.encode_sequence(torch.tensor(random_store.tokens[3:4]), random_store.positions)
    layer = random_store.positions[:, 1] == 2
    expected = z[0, layer].double().std(dim=0).mean().item()
    assert spread[3, 2] == pytest.approx(expected, rel=1e-5)


def test_cli_analyze(random_store, tiny_run, tmp_path, capsys):
    out, _ = tiny_run
    assert main(["analyze", str(out), "--out", str(tmp_path / "a")]) == 0
    assert "| log_spectral_norm |" in capsys.readouterr().out
    report = json.loads((tmp_path / "a" / "analysis.json").read_text())
    assert set(report["per_layer"]) == {"z_spread", "log_spectral_norm", "alpha",
                                        "alpha_weighted"}
    assert len(report["per_layer"]["alpha"]) == 36 and len(report["layers"]) == 5
    # Only the second convolution of CNN-s (25 slices × 6) has 50 eigenvalues for a fit.
    assert [v is not None for v in report["per_layer"]["alpha"][0]] == [
        False, True, False, False, False]
    assert (tmp_path / "a" / "analysis.png").read_bytes()[:4] == b"\x89PNG"
