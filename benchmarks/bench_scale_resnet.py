"""Tokenize, embed and sample CIFAR ResNet-18/34/50/101 on a CPU: tokens, seconds, peak memory.

For each architecture (3 input channels, 10 classes), a fresh subprocess

1. builds a SANE of the ``small`` preset (random weights; token size 288 as in the paper's
   ResNet zoo; position tables sized for the largest of the four, so that every process holds
   the same SANE) and records its resident memory: the *baseline* (interpreter, torch, SANE);
2. builds the ResNet (seed 0) and a :class:`~sane.weights.tokenizer.Tokenizer` for it (batch
   norm kept out of the tokens as by default, rows longer than 288 values split in several
   tokens, standardization fitted on the model itself, no alignment, the model's permutation
   spec), then makes all its tokens once, 4,096 at a time, to time tokenization
   (``tokenize s``);
3. encodes it in one haloed pass, ``Pipeline(sane, tokenizer).latents([resnet])`` (``haloed
   pass s``, what sampling and decoding encode with), embeds it once,
   ``embed([resnet], permutations=0)`` (``embed once s``: one tiled view, half the spans),
   then as a user does, ``embed([resnet])``, each token averaged over the views of the
   aligned model and the default number of random permutations (``embed s``; the tokens
   made span by span as the encoder reads them, each permuted tensor as it is read); the
   ratio of the last to the first is the cost of the permutation-averaged embedding in
   haloed passes;
4. samples one model around it, ``Pipeline.sample([resnet], count=1)`` (encodes again, adds
   noise to the latents, decodes haloed and writes the decoded tokens into a new ResNet
   piece by piece).

Peak memory is the process's peak resident set size (``ru_maxrss``). *Weights* are the
ResNet's state dict; the *output* is the sampled ResNet's state dict plus the embedding. What
the target bounds is the peak beyond baseline, weights and output, i.e. the working memory of
the pipeline (the per-token latents ``[N, d_z]`` count there: they are not the output), which
should barely grow with the model. Run:
``.venv/bin/python benchmarks/bench_scale_resnet.py [--models resnet18,resnet101]``.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sane.weights import TokenManifest
    from sane.zoo.architectures import ArchConfig

MODELS = ("resnet18", "resnet34", "resnet50", "resnet101")
TOKEN_SIZE = 288
PRESET = "small"
TARGET = 1.5  # ResNet-101 / ResNet-18, peak beyond baseline, weights and output
# Tokens the paper reports for its ResNet-18 zoo (batch norm included); none for the others.
PAPER_TOKENS = {"resnet18": "≈ 50k"}


def peak_mib() -> float:
    """The process's peak resident set size so far, MiB (``ru_maxrss`` is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(name: str) -> dict[str, float]:
    """Run in the child: build, tokenize, embed and sample ResNet ``name``; the figures."""
    import torch

    from sane.model import PRESETS, SANE, SANEConfig
    from sane.pipeline import Pipeline
    from sane.weights import fit_standardization, make_manifest
    from sane.weights.permutations import permutation_spec
    from sane.weights.tokenizer import Tokenizer
    from sane.zoo.architectures import build_model

    torch.set_num_threads(2)
    config = SANEConfig(token_size=TOKEN_SIZE, max_positions=max_positions(), **PRESETS[PRESET])
    sane = SANE(config).eval()
    figures = {"baseline_mib": peak_mib()}

    model = build_model(arch(name), seed=0).eval()
    figures["weights_mib"] = state_mib(model.state_dict())
    manifest = make_manifest(model.state_dict(), TOKEN_SIZE, model=model)
    tokenizer = Tokenizer(manifest, fit_standardization([model.state_dict()],
                                                        manifest.tokenized_keys()),
                          spec=permutation_spec(model))
    figures["tokens"] = manifest.num_tokens

    clock = time.perf_counter()
    read = tokenizer.reader(model.state_dict())
    for start in range(0, manifest.num_tokens, 4096):
        read(start, min(start + 4096, manifest.num_tokens))
    figures["tokenize_s"] = time.perf_counter() - clock

    pipe = Pipeline(sane, tokenizer)
    clock = time.perf_counter()
    pipe.latents([model])
    figures["haloed_s"] = time.perf_counter() - clock
    clock = time.perf_counter()
    pipe.embed([model], permutations=0)
    figures["embed_once_s"] = time.perf_counter() - clock
    clock = time.perf_counter()
    embedding = pipe.embed([model])
    figures["embed_s"] = time.perf_counter() - clock
    figures["embed_peak_mib"] = peak_mib()

    clock = time.perf_counter()
    (sample,) = pipe.sample([model], count=1)
    figures["sample_s"] = time.perf_counter() - clock

    figures["output_mib"] = state_mib(sample.state_dict()) + embedding.nbytes / 2**20
    figures["peak_mib"] = peak_mib()
    return figures


def arch(name: str) -> ArchConfig:
    """The CIFAR configuration of ResNet ``name``: 3×32×32 inputs, 10 classes."""
    from sane.zoo.architectures import ArchConfig

    return ArchConfig(name=name, in_channels=3, input_size=32)


def plan(name: str, include_batchnorm: bool = False) -> TokenManifest:
    """The token manifest of ResNet ``name`` (built on the meta device: no weights)."""
    import torch

    from sane.weights import make_manifest
    from sane.zoo.architectures import ARCHITECTURES

    with torch.device("meta"):
        model = ARCHITECTURES[name](arch(name))
    return make_manifest(model.state_dict(), TOKEN_SIZE, model=model,
                         include_batchnorm=include_batchnorm)


def max_positions() -> tuple[int, int, int]:
    """Exclusive bounds of the positions ``(n, l, k)`` over all four ResNets."""
    manifests = [plan(name) for name in MODELS]
    return (max(m.num_tokens for m in manifests), max(len(m.layers) for m in manifests),
            max(layer.rows for m in manifests for layer in m.layers))


def state_mib(state: dict) -> float:
    """The size of a state dict's tensors, MiB."""
    return sum(t.numel() * t.element_size() for t in state.values()) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(MODELS),
                        help=f"comma-separated, among {', '.join(MODELS)}")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child)))
        return
    names = args.models.split(",")
    unknown = sorted(set(names) - set(MODELS))
    if unknown:
        parser.error(f"unknown models {unknown}; choose among {', '.join(MODELS)}")

    from sane.downstream.features import PERMUTATIONS
    from sane.model import PRESETS, SANE, SANEConfig

    bounds = max_positions()
    window, halo = SANE(SANEConfig(token_size=TOKEN_SIZE, max_positions=(8, 8, 8),
                                   **PRESETS[PRESET])).halo_defaults()
    print(f"SANE preset {PRESET!r} (random weights), tokens of {TOKEN_SIZE}, positions "
          f"{list(bounds)}; haloed: window {window}, halo {halo}, 64 spans per pass; "
          f"2 threads; one model per fresh process; batch norm kept out of the tokens")
    print()
    print(f"default embedding: the aligned model and {PERMUTATIONS} random permutations, tiled")
    print()
    print("| model | tokens | with BN | paper | tokenize s | haloed pass s | embed once s "
          "| embed s | embed ÷ haloed pass | sample s "
          "| baseline MiB "
          "| weights MiB | output MiB | peak after embed MiB | peak MiB | peak − baseline MiB "
          "| peak − baseline − weights − output MiB |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:"
          "|---:|")
    extra = {}
    for name in names:
        child = subprocess.run([sys.executable, __file__, "--child", name],
                               capture_output=True, text=True, check=True)
        f = json.loads(child.stdout.strip().splitlines()[-1])
        beyond = f["peak_mib"] - f["baseline_mib"]
        extra[name] = beyond - f["weights_mib"] - f["output_mib"]
        print(f"| {name} | {f['tokens']:,} | {plan(name, True).num_tokens:,} "
              f"| {PAPER_TOKENS.get(name, '–')} | {f['tokenize_s']:.1f} "
              f"| {f['haloed_s']:.1f} | {f['embed_once_s']:.1f} | {f['embed_s']:.1f} "
              f"| {f['embed_s'] / f['haloed_s']:.1f}× "
              f"| {f['sample_s']:.1f} | {f['baseline_mib']:.0f} | {f['weights_mib']:.0f} "
              f"| {f['output_mib']:.0f} | {f['embed_peak_mib']:.0f} | {f['peak_mib']:.0f} "
              f"| {beyond:.0f} | {extra[name]:.0f} |", flush=True)
    if {"resnet18", "resnet101"} <= set(extra):
        ratio = extra["resnet101"] / extra["resnet18"]
        verdict = "meets" if ratio <= TARGET else "misses"
        print(f"\npeak beyond weights and output, ResNet-101 / ResNet-18: {ratio:.2f}× "
              f"({verdict} the target of {TARGET}×)")


if __name__ == "__main__":
    main()
