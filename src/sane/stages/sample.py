"""``sane sample``: new models for a task from a pretrained SANE, end to end, with the
evidence a reader needs to trust them.

Prompts are training models of the store SANE was pretrained on, or models of a zoo of
another architecture (:mod:`sane.stages.prompts`). Each prompt architecture (a
hyperparameter zoo mixes activations and dropout) is sampled on its own, and its samples
have that architecture.

**Three roles for data.** Batch norm is conditioned on the task's training images; draws
are *selected* (subsampling, bootstrapping) by accuracy on the validation split; everything
reported (kept samples, prompts, baselines) is accuracy on the test split. Both scores of
every model are kept.

**Copy baselines of equal budget** (:mod:`sane.downstream.copies`): prompts plus isotropic
noise, prompts plus per-tensor noise, and averages of two prompts, each replaying the
sampler's rounds with as many candidates at the same distances and keeping as many by the
same score. The verdict is against the strongest baseline (on validation), with a 95 %
interval over prompts (:mod:`sane.downstream.verdicts`). Each kept model's novelty
(:mod:`sane.downstream.memorization`) is measured against its prompts and the training
models.

::

    OUT/
      sample_000.safetensors ...   the kept models, best first within each architecture
                                   (state dicts in the aligned frame, keys of their own
                                   architecture: they load into ``build_model(arch)``)
      samples.json                 :class:`SampleResult`: the request, the splits, per
                                   architecture its noise and distances, the prompts, the
                                   kept samples, each baseline's kept models, every draw
      samples.md                   the same as tables, with the verdicts
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sane import atomic, markdown
from sane.data import Dataset
from sane.downstream.copies import copy_baselines
from sane.downstream.memorization import (
    Novelty,
    novelty,
    prompt_distance,
    training_distance,
)
from sane.downstream.sampling import (
    Draw,
    SamplingConfig,
    State,
    Target,
    load_state,
    score_state,
)
from sane.downstream.verdicts import Scored, Versus, strongest, versus
from sane.errors import ConfigError, FormatError
from sane.model import SANE
from sane.model.sane import inference_precision, usable_device
from sane.pipeline import Pipeline
from sane.run import Run
from sane.settings import from_table
from sane.stages.prompts import SampleRequest, request_prompts
from sane.zoo import ArchConfig, build_model
from sane.zoo.evaluation import accuracy
from sane.zoo.layout import as_architecture

SELECTION_SPLIT, REPORT_SPLIT = "val", "test"
SANE_METHOD = "SANE"


@dataclass(frozen=True)
class PromptRecord:
    """A prompt model at ``epoch``, of architecture index ``architecture``, with its scores
    on the selection and report splits."""

    model: str
    epoch: int
    architecture: int
    selection: float
    report: float


@dataclass(frozen=True)
class KeptRecord:
    """A kept model of SANE (saved as ``file``) or of a copy baseline (not saved): its
    scores, its nearest prompt and L2 distance to it; for SANE's also its prediction
    ``agreement`` and ``error_overlap`` with that prompt on the report split and its
    distance to the nearest training model (:class:`~sane.downstream.memorization.Novelty`)."""

    architecture: int
    selection: float
    report: float
    nearest_prompt: str
    distance: float
    file: str | None = None
    agreement: float | None = None
    error_overlap: float | None = None
    nearest_training: float | None = None


@dataclass(frozen=True)
class DrawRecord:
    """One candidate of a method (:class:`~sane.downstream.sampling.Draw`): ``source``
    indexes the round's prompts (the architecture's prompts in round 1, the method's own
    kept models of the previous round after it; None for a draw from the prior)."""

    architecture: int
    round: int
    source: int | None
    distance: float | None
    selection: float
    report: float
    kept: bool


@dataclass(frozen=True)
class ArchitectureRecord:
    """One prompt architecture: its ``index``, ``architecture`` (an ``ArchConfig`` as a
    table), the absolute ``noise_std`` per round, the mean distance between two of its
    prompts and the median distance from a training model to its nearest other one."""

    index: int
    architecture: dict[str, Any]
    noise_std: list[float]
    prompt_distance: float | None
    training_distance: float | None


@dataclass(frozen=True)
class SampleResult:
    """What a sampling request computed (the content of ``samples.json``): the ``request``,
    the split that selected and the split that is reported, the ``architectures``,
    ``prompts``, kept ``samples``, each copy baseline's kept models (``baselines``) and every
    candidate of every method (``draws``: SANE's and each baseline's)."""

    request: SampleRequest
    selection_split: str
    report_split: str
    architectures: list[ArchitectureRecord]
    prompts: list[PromptRecord]
    samples: list[KeptRecord]
    baselines: dict[str, list[KeptRecord]]
    draws: dict[str, list[DrawRecord]]

    @classmethod
    def load(cls, out: str | Path) -> SampleResult:
        """The result in a ``sane sample`` output directory."""
        file = Path(out) / "samples.json"
        if not file.is_file():
            raise FormatError(f"{out} holds no sampled models: samples.json not found "
                              "(run `sane sample RUN --out DIR` first)")
        try:
            return from_table(cls, atomic.read_json(file), str(file))
        except ConfigError as error:
            raise FormatError(f"malformed sampling result: {error} (sample again into an "
                              "empty directory)") from error

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {"request": self.request.to_dict()}

    def kept(self, method: str = SANE_METHOD) -> Scored:
        """The kept models of ``method`` (SANE or a baseline), each grouped with its nearest
        prompt."""
        records = self.samples if method == SANE_METHOD else self.baselines[method]
        return Scored([r.selection for r in records], [r.report for r in records],
                      [f"{r.architecture}:{r.nearest_prompt}" for r in records])

    def first_draws(self, method: str = SANE_METHOD) -> Scored:
        """The first round's candidates of ``method``, before any selection, each grouped
        with the prompt it was drawn around."""
        records = [d for d in self.draws[method] if d.round == 1]
        return Scored([d.selection for d in records], [d.report for d in records],
                      [f"{d.architecture}:{d.source}" for d in records])

    def last_draws_mean(self, method: str = SANE_METHOD) -> float:
        """Mean report score of the last round's candidates of ``method``."""
        last = max(d.round for d in self.draws[method])
        return _mean([d.report for d in self.draws[method] if d.round == last])

    def first_distance(self) -> float:
        """Mean distance of SANE's first-round draws to the prompt they were drawn around
        (NaN for draws from the prior)."""
        return _mean([d.distance for d in self.draws[SANE_METHOD]
                      if d.round == 1 and d.distance is not None])

    @property
    def prompt_mean(self) -> float:
        """Mean report score of the prompts."""
        return _mean([p.report for p in self.prompts])

    @property
    def kept_mean(self) -> float:
        """Mean report score of the kept samples."""
        return _mean([s.report for s in self.samples])

    def baseline_mean(self, name: str) -> float:
        """Mean report score of the kept models of baseline ``name`` (NaN without it)."""
        return _mean([r.report for r in self.baselines.get(name, [])])


@dataclass(frozen=True)
class Comparison:
    """Kept samples against every copy baseline (``rows``, the ``strongest`` on validation
    first), pooled over one or several results (sampling seeds)."""

    strongest: str | None
    rows: list[Versus]

    @property
    def verdict(self) -> Versus | None:
        """The row against the strongest baseline."""
        return self.rows[0] if self.rows else None


def compare(results: Sequence[SampleResult], *, draws: bool = False,
            names: Sequence[str] | None = None) -> Comparison:
    """SANE's kept models (with ``draws``: its first-round candidates, unselected) against
    those of each baseline of ``names`` (default: every one), pooled over ``results`` of the
    same request but for the seed (a prompt is one group across seeds)."""
    def pooled(method: str) -> Scored:
        parts = [r.first_draws(method) if draws else r.kept(method) for r in results]
        return sum(parts[1:], parts[0])

    ours = pooled(SANE_METHOD)
    names = [n for n in (results[0].baselines if names is None else names)
             if all(n in r.baselines for r in results)]
    theirs = {name: pooled(name) for name in names}
    best = strongest(theirs)
    order = sorted(names, key=lambda n: n != best)
    return Comparison(best, [versus(ours, name, theirs[name]) for name in order])


def zoo_target(arch: ArchConfig, data: Dataset) -> Target:
    """Architecture ``arch`` as a sampling target: selected by accuracy on the validation
    split of ``data``, reported by accuracy on its test split, batch norm conditioned on its
    training images."""
    return Target(build=lambda seed: build_model(arch, seed=seed),
                  select=lambda net: accuracy(net, data.val.x, data.val.y),
                  report=lambda net: accuracy(net, data.test.x, data.test.y),
                  images=data.train.x)


def sample_from_run(
    run: str | Path, out: str | Path, *, store: str | Path | None = None, prompts: int = 5,
    prompt_epoch: int | None = None, best_prompts: bool = False,
    config: SamplingConfig | None = None, dataset: str | None = None, root: str | None = None,
    prompts_from: str | Path | None = None, device: str = "cpu", precision: str = "auto",
    prompt_split: str = "train",
) -> SampleResult:
    """Sample models with the SANE in ``run`` around ``prompts`` prompt models: training
    models of ``store`` (default: the run's; with ``best_prompts`` the most accurate on
    validation; with ``prompt_split`` "val" or "test", models held out from pretraining),
    scored on its zoo's task or on ``dataset`` (read from ``root``); or, with
    ``prompts_from``, models of a zoo of another architecture, scored on that zoo's task
    (:mod:`sane.stages.prompts`). The SANE computes on ``device`` in ``precision``
    (:meth:`sane.model.SANE.from_pretrained`). Prompts of several architectures are sampled
    per architecture: a sample has its prompts' architecture. Writes ``out`` (see the module
    docstring) and returns what it wrote; an ``out`` that holds the result of the same
    request is returned as it is."""
    config = config or SamplingConfig()
    out = Path(out)
    if prompts_from is not None and (store is not None or dataset is not None
                                     or prompt_split != "train"):
        raise ConfigError("prompts from a zoo of the target architecture are scored on that "
                          "zoo's task: give --prompts-from without --store, --dataset or "
                          "--prompt-split")
    request = SampleRequest(
        run=str(Path(run).resolve()),
        store=None if prompts_from is not None else str(Run(run).store(store).path.resolve()),
        prompts=prompts, prompt_epoch=prompt_epoch, best_prompts=best_prompts, config=config,
        dataset=dataset, root=root,
        prompts_from=None if prompts_from is None else str(Path(prompts_from).resolve()),
        precision=inference_precision(precision, usable_device(device)),
        prompt_split=prompt_split)
    if (out / "samples.json").is_file():
        done = _done(out, request)
        if done is not None:
            return done
    model = SANE.from_pretrained(run, device=device, precision=request.precision)
    chosen = request_prompts(request)
    pipe = Pipeline(model, chosen.tokenizer, positions=[chosen.positions])
    keys = chosen.tokenizer.manifest.tokenized_keys()
    architectures, prompt_records, kept = [], [], []
    baselines: dict[str, list[KeptRecord]] = {}
    draws: dict[str, list[DrawRecord]] = {SANE_METHOD: []}
    for arch_index, group in chosen.groups().items():
        arch = chosen.architectures[arch_index]
        target = dataclasses.replace(zoo_target(arch, chosen.data), fresh=chosen.fresh)
        states = [chosen.states[i] for i in group]
        samples = pipe.sample_selected(states, target, config)
        ids = [chosen.ids[i][0] for i in group]
        training = chosen.training.get(arch_index, [])
        generator = torch.Generator().manual_seed(config.seed)
        architectures.append(ArchitectureRecord(
            arch_index, arch.to_dict(), samples.noise_std, prompt_distance(states, keys),
            training_distance(training, keys)))
        prompt_records += [
            PromptRecord(*chosen.ids[i], arch_index, s.selection, s.report)
            for i, s in zip(group, (score_state(dict(state), target, config.bn_batches,
                                                generator) for state in states))]
        for state, scores, n in zip(samples.states, samples.scores,
                                    _novelty(samples.states, states, keys, target,
                                             chosen.data, training)):
            file = f"sample_{len(kept):03d}.safetensors"
            atomic.save_tensors(out / file, as_architecture(arch, state))
            kept.append(KeptRecord(arch_index, scores.selection, scores.report,
                                   ids[n.nearest_prompt], n.distance, file, n.agreement,
                                   n.error_overlap, n.nearest_training))
        draws[SANE_METHOD] += _draw_records(arch_index, samples.draws, samples.kept)
        for name, copies in copy_baselines(states, samples, chosen.tokenizer, target,
                                           config).items():
            baselines.setdefault(name, []).extend(
                KeptRecord(arch_index, s.selection, s.report, ids[n.nearest_prompt], n.distance)
                for s, n in zip(copies.scores,
                                _novelty(copies.states, states, keys, target, chosen.data)))
            draws.setdefault(name, []).extend(_draw_records(arch_index, copies.draws,
                                                            copies.kept))
    saved = {k.file for k in kept}
    for stale in out.glob("sample_*.safetensors"):  # left by an earlier, larger request
        if stale.name not in saved:
            stale.unlink()
    result = SampleResult(request, SELECTION_SPLIT, REPORT_SPLIT, architectures,
                          prompt_records, kept, baselines, draws)
    atomic.write_json(out / "samples.json", result.to_dict())
    atomic.write_text(out / "samples.md", _markdown(result))
    return result


def _done(out: Path, request: SampleRequest) -> SampleResult | None:
    """The result in ``out`` when it answers ``request`` (its report rewritten when this
    version writes it otherwise); None when it answers another request or an earlier
    version's."""
    try:
        done = SampleResult.load(out)
    except FormatError:
        return None
    if done.request != request:
        return None
    table = _markdown(done)
    if not (out / "samples.md").is_file() or (out / "samples.md").read_text() != table:
        atomic.write_text(out / "samples.md", table)
    return done


def _novelty(models: list[State], prompts: list[State], keys: Sequence[str], target: Target,
             data: Dataset, training: Sequence[State] = ()) -> list[Novelty]:
    """:func:`~sane.downstream.memorization.novelty` of ``models`` on the report split."""
    return novelty(models, prompts, keys, load=lambda state: load_state(target.build(0), state),
                   inputs=data.test.x, labels=data.test.y, training=training)


def _draw_records(arch_index: int, draws: list[Draw], kept: list[list[int]]
                  ) -> list[DrawRecord]:
    chosen = {i for indices in kept for i in indices}
    return [DrawRecord(arch_index, d.round, d.source, d.distance, d.scores.selection,
                       d.scores.report, i in chosen) for i, d in enumerate(draws)]


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def _markdown(result: SampleResult) -> str:
    lines = [f"# Sampled models: selected on {result.selection_split}, reported on "
             f"{result.report_split}", "",
             f"Accuracy on the {result.selection_split} split chose the kept models (of SANE "
             f"and of every baseline alike); every accuracy below is on the "
             f"{result.report_split} split unless a column says otherwise. Each copy baseline "
             "drew as many candidates per round as the sampler, at the same distances, and "
             "kept as many by the same score.", ""]
    for group in result.architectures:
        index, arch = group.index, group.architecture
        samples = [s for s in result.samples if s.architecture == index]
        prompts = [p for p in result.prompts if p.architecture == index]
        rounds = sorted({d.round for d in result.draws[SANE_METHOD]})
        sane_draws = [d for d in result.draws[SANE_METHOD] if d.architecture == index]
        scale = ("" if group.prompt_distance is None
                 else f"Prompts lie {group.prompt_distance:.2f} apart")
        if group.training_distance is not None:
            scale += (f"{'; a' if scale else 'A'} training model lies "
                      f"{group.training_distance:.2f} from its nearest other one (median)")
        lines += [f"## {arch['name']}, {arch['activation']}, dropout {arch['dropout']}", "",
                  markdown.table(
                      ["round", "noise std", f"draws: {result.selection_split}",
                       f"draws: {result.report_split}", f"kept: {result.report_split}"],
                      [[r, group.noise_std[r - 1],
                        _mean([d.selection for d in sane_draws if d.round == r]),
                        _mean([d.report for d in sane_draws if d.round == r]),
                        _mean([d.report for d in sane_draws if d.round == r and d.kept])]
                       for r in rounds]), "",
                  markdown.table(
                      ["model", result.selection_split, result.report_split, "nearest prompt",
                       "distance to it", "agreement", "error overlap",
                       "nearest training model"],
                      [[s.file, s.selection, s.report, s.nearest_prompt, f"{s.distance:.3f}",
                        s.agreement, s.error_overlap,
                        None if s.nearest_training is None else f"{s.nearest_training:.3f}"]
                       for s in samples]
                      + [[f"prompt {p.model} (epoch {p.epoch})", p.selection, p.report, None,
                          None, None, None, None] for p in prompts]),
                  "", f"{scale}." if scale else "", ""]
    comparison = compare([result])
    rows = []
    for row in comparison.rows:
        kept = result.kept(row.baseline)
        rows.append([row.baseline + (" (strongest)" if row.baseline == comparison.strongest
                                     else ""),
                     kept.selection_mean, kept.report_mean,
                     _mean([r.distance for r in result.baselines[row.baseline]]),
                     result.last_draws_mean(row.baseline), f"{row.difference:+.4f}",
                     "" if row.interval is None
                     else f"[{row.interval[0]:+.4f}, {row.interval[1]:+.4f}]", row.verdict])
    sane = result.kept()
    lines += ["## Against copies of the prompts", "",
              markdown.table(
                  ["kept models of", f"{result.selection_split}", f"{result.report_split}",
                   "distance to nearest prompt", f"last round's draws: {result.report_split}",
                   "SANE − it", "95 % interval", "SANE's samples"],
                  [[SANE_METHOD, sane.selection_mean, sane.report_mean,
                    _mean([s.distance for s in result.samples]),
                    result.last_draws_mean(), None, None, None], *rows]), "",
              _verdict(result, comparison), ""]
    return "\n".join(lines)


def _verdict(result: SampleResult, comparison: Comparison) -> str:
    """One paragraph: kept samples against the prompts and the strongest baseline."""
    ratio = result.kept_mean / result.prompt_mean
    text = (f"Kept samples score {result.kept_mean:.4f} on the {result.report_split} split "
            f"against {result.prompt_mean:.4f} for their prompts ({ratio:.2f}×).")
    if comparison.verdict is None:
        return text + " No copy baseline could be made."
    return (f"{text} Against the strongest copy baseline (highest on "
            f"{result.selection_split}): {comparison.verdict.sentence()}; the interval is over "
            "prompts, each kept model grouped with its nearest prompt.")
