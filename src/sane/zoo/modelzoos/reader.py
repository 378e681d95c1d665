"""Import a Model Zoos directory as a zoo: trials, results, checkpoints and the report.

Each trial's ``params.json`` gives the model's entry (:mod:`sane.zoo.modelzoos.params`), its
``result.json`` the metrics per epoch and its checkpoint folders the state dicts, all checked
before anything is written; what was left out, and why, goes into an :class:`ImportReport`.

Timeline: the Model Zoos trainable evaluates the initial model in its first iteration, so
``checkpoint_0`` is the initialization and ``training_iteration`` ``e`` is epoch ``e``. Epochs
are read from ``training_iteration`` (checked on every line of every trial); a ``result.json``
without it falls back to the loaders' rule: line ``i`` is epoch ``i`` when ``checkpoint_0``
exists, else epoch ``i + 1``.

Import never unpickles: every checkpoint is read by :func:`sane.checkpoints.read_state_dict`
(``torch.load(weights_only=True)``; half precision read as float32) and checked against the
state dict of the architecture rebuilt from ``params.json`` (keys, shapes, dtypes), then for
finiteness and magnitude. A bad checkpoint is skipped and reported, its
metrics row kept with ``checkpoint: false``; a trial with an unusable ``params.json`` or
``result.json``, or without a usable checkpoint, is skipped and reported.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from sane import atomic
from sane.checkpoints import check_weights, read_state_dict
from sane.errors import ConfigError, FormatError
from sane.locking import writer_lock
from sane.zoo.architectures import ArchConfig, build_model
from sane.zoo.modelzoos.params import DATASET_KEY, SPLIT_KEY, entry_from_params
from sane.zoo.storage import MANIFEST, METRIC_KEYS, ModelEntry, Zoo, make_split

# Weights beyond this magnitude only come from diverged training. The Model Zoos loaders
# filtered much harder (|w| > 5 for the CNN zoos, which also drops healthy models trained with
# large weights; up to 25,000 for ResNets): pass max_abs=5 to reproduce that selection.
DEFAULT_MAX_ABS = 1e4

# The Model Zoos trainable logs -999 for the training metrics of the initial evaluation.
NOT_MEASURED = -999
ACCURACY_KEYS = ("train_acc", "val_acc", "test_acc")
CHECKPOINT_DIR = re.compile(r"checkpoint_(\d+)")
# Dataset names recognized in `dataset::dump` paths and zoo folder names, most specific first.
DATASET_PATTERNS = (
    (re.compile(r"(?<![a-z])f(ashion)?[-_]?mnist"), "fashion-mnist"),
    (re.compile(r"mnist"), "mnist"),
    (re.compile(r"cifar[-_]?100"), "cifar100"),
    (re.compile(r"cifar[-_]?10"), "cifar10"),
    (re.compile(r"svhn"), "svhn"),
    (re.compile(r"usps"), "usps"),
    (re.compile(r"stl[-_]?10"), "stl10"),
    (re.compile(r"tiny[-_]?imagenet"), "tiny-imagenet"),
)
REPORT_FILE = "import_report.json"
Template = dict[str, tuple[tuple[int, ...], torch.dtype]]  # state-dict key -> shape, dtype
SUMMARY_LINES = 20  # skipped items listed by str(report); the report file lists all


@dataclass(frozen=True)
class Skipped:
    """A trial or checkpoint left out of an import; ``reason`` names the file at fault."""

    kind: str  # "trial" or "checkpoint"
    path: Path  # the trial folder or the checkpoint file
    reason: str


@dataclass(frozen=True)
class ImportReport:
    """What an import wrote and what it left out (``str()`` gives the CLI summary)."""

    source: Path
    out: Path
    models: int
    checkpoints: int
    skipped: tuple[Skipped, ...]
    ignored: tuple[str, ...]  # sub-folders of the source without params.json

    @property
    def skipped_trials(self) -> int:
        return sum(s.kind == "trial" for s in self.skipped)

    @property
    def skipped_checkpoints(self) -> int:
        return sum(s.kind == "checkpoint" for s in self.skipped)

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": str(self.source), "out": str(self.out), "models": self.models,
            "checkpoints": self.checkpoints, "ignored": list(self.ignored),
            "skipped": [{"kind": s.kind, "path": str(s.path), "reason": s.reason}
                        for s in self.skipped],
        }

    def __str__(self) -> str:
        lines = [f"imported {self.models} models with {self.checkpoints} checkpoints "
                 f"from {self.source} into {self.out}"]
        if self.skipped:
            lines.append(f"skipped {_count(self.skipped_checkpoints, 'checkpoint')} and "
                         f"{_count(self.skipped_trials, 'trial')} "
                         f"(all in {self.out / REPORT_FILE}):")
            lines += [f"  {s.kind}: {s.reason}" for s in self.skipped[:SUMMARY_LINES]]
            if len(self.skipped) > SUMMARY_LINES:
                lines.append(f"  ... and {len(self.skipped) - SUMMARY_LINES} more")
        if self.ignored:
            lines.append(f"ignored {_count(len(self.ignored), 'folder')} without params.json")
        return "\n".join(lines)


@dataclass(frozen=True)
class _Trial:
    """One trial folder, parsed and checked, ready to be written."""

    folder: Path
    params: dict[str, Any]
    entry: ModelEntry
    rows: dict[int, dict[str, float | None]]  # epoch -> metrics, only epochs with a record
    checkpoints: dict[int, Path]  # epoch -> usable checkpoint file


def import_modelzoos(
    src: str | Path,
    out: str | Path,
    *,
    max_abs: float = DEFAULT_MAX_ABS,
    split_seed: int = 0,
    strict: bool = False,
    progress: bool = True,
) -> ImportReport:
    """Read the Model Zoos directory ``src`` and write it as a zoo at ``out``.

    Trials are taken in sorted folder-name order; a trial's model id is its ``sane::id`` when
    it has one (an export of ours), else ``m<index:05d>`` from its position among the trial
    folders (skipped trials keep their number, so ids do not depend on what was skipped). The
    original folder names are kept in the manifest (``modelzoos.trials``) for export. The split
    is ``make_split(ids, seed=split_seed)`` unless every model carries its ``sane::split``.

    Checkpoints with non-finite values or a floating-point entry with ``|w| > max_abs`` are
    skipped, as are checkpoints whose keys, shapes or dtypes differ from the architecture.
    With ``strict``, the first skipped item raises :class:`FormatError` instead. An interrupted
    import resumes when rerun with the same arguments; a directory another process is writing
    raises :class:`~sane.errors.BusyError`. The report is also written to
    ``out/import_report.json``.
    """
    src, out = Path(src), Path(out)
    if not (isinstance(max_abs, (int, float)) and math.isfinite(max_abs) and max_abs > 0):
        raise ConfigError(f"max_abs must be a positive finite number, got {max_abs!r}")
    if not src.is_dir():
        raise FormatError(f"{src}: no such directory (expected a folder of ray-tune trials)")
    folders = sorted(p for p in src.iterdir() if p.is_dir())
    trial_folders = [p for p in folders if (p / "params.json").is_file()]
    ignored = tuple(p.name for p in folders if not (p / "params.json").is_file())
    if not trial_folders:
        raise FormatError(f"{src}: no trial folders (sub-folders holding params.json)")

    skipped: list[Skipped] = []

    def skip(kind: str, path: Path, error: FormatError) -> None:
        if strict:
            raise error
        skipped.append(Skipped(kind, path, str(error)))

    templates: dict[ArchConfig, Template] = {}
    trials: list[_Trial] = []
    for index, folder in enumerate(tqdm(trial_folders, desc="checking trials", unit="trial",
                                        disable=None if progress else True)):
        try:
            trial = _read_trial(folder, f"m{index:05d}", templates, max_abs, skip)
        except FormatError as error:
            skip("trial", folder, error)
            continue
        trials.append(trial)
    if not trials:
        reasons = "; ".join(s.reason for s in skipped[:3])
        raise FormatError(f"{src}: no trial could be imported ({reasons})")

    dup = sorted(i for i, n in Counter(t.entry.id for t in trials).items() if n > 1)
    if dup:
        raise FormatError(f"{src}: several trials give model id(s) {dup}")
    manifest = {
        "dataset": _dataset(src, trials),
        "models": [t.entry.to_dict() for t in trials],
        "split": _split(trials, split_seed),
        "modelzoos": {"source": str(src.resolve()), "max_abs": max_abs,
                      "trials": {t.entry.id: t.folder.name for t in trials}},
    }
    with writer_lock(out):
        written = _write(_create_or_resume(out, manifest), trials, templates, max_abs, progress)
        report = ImportReport(src, out, len(trials), written, tuple(skipped), ignored)
        atomic.write_json(out / REPORT_FILE, report.to_dict())
    return report


def _write(zoo: Zoo, trials: list[_Trial], templates: dict[ArchConfig, Template],
           max_abs: float, progress: bool) -> int:
    """Write the checked ``trials`` into ``zoo`` (epochs already there are kept); the number
    of checkpoints the zoo then holds."""
    written = 0
    for trial in tqdm(trials, desc="importing", unit="model", disable=None if progress else True):
        template = templates[trial.entry.architecture]
        done = zoo.last_epoch(trial.entry.id)
        for epoch in sorted(trial.rows.keys() | trial.checkpoints.keys()):
            path = trial.checkpoints.get(epoch)
            if done is not None and epoch <= done:
                written += path is not None
                continue
            state = None
            if path is not None:
                # Checked in the first pass; a failure now means the file changed meanwhile.
                state = _checked_state_dict(path, template, max_abs)
                written += 1
            zoo.write_epoch(trial.entry.id, epoch, state, trial.rows.get(epoch, {}))
    return written


def _read_trial(
    folder: Path, default_id: str, templates: dict[ArchConfig, Template], max_abs: float,
    skip: Callable[[str, Path, FormatError], None],
) -> _Trial:
    """Parse one trial and check all its checkpoints (none is kept in memory)."""
    params_file = folder / "params.json"
    params = _read_json_object(params_file)
    entry = entry_from_params(params, params_file, default_id)
    template = _template(entry.architecture, templates, params_file)

    files = _checkpoint_files(folder)
    rows = _read_results(folder / "result.json", has_initial=0 in files)
    usable = {}
    for epoch, path in sorted(files.items()):
        try:
            _checked_state_dict(path, template, max_abs)
        except FormatError as error:
            skip("checkpoint", path, error)
            continue
        usable[epoch] = path
    if not usable:
        raise FormatError(f"{folder}: no usable checkpoint (of {len(files)})")
    return _Trial(folder, params, entry, rows, usable)


def _template(arch: ArchConfig, templates: dict[ArchConfig, Template], file: Path) -> Template:
    """Names, shapes and dtypes of ``arch``'s state dict, built once per architecture.

    (A seed keeps the global RNG untouched; the meta device would avoid the allocation but
    its initializers import torch's compiler stack, seconds per process.)
    """
    if arch not in templates:
        try:
            state = build_model(arch, seed=0).state_dict()
        except (ConfigError, TypeError, ValueError) as error:
            raise FormatError(f"{file}: {error}") from error
        templates[arch] = {k: (tuple(v.shape), v.dtype) for k, v in state.items()}
    return templates[arch]


def _checkpoint_files(folder: Path) -> dict[int, Path]:
    """Epoch -> ``checkpoint_<N>/checkpoints`` for every checkpoint folder of a trial."""
    files: dict[int, Path] = {}
    for sub in sorted(folder.iterdir()):
        match = CHECKPOINT_DIR.fullmatch(sub.name)
        if not (match and sub.is_dir()):
            continue
        epoch = int(match.group(1))
        if epoch in files:
            raise FormatError(f"{folder}: two checkpoint folders for iteration {epoch} "
                              f"({files[epoch].parent.name}, {sub.name})")
        files[epoch] = sub / "checkpoints"
    return files


def _read_results(file: Path, *, has_initial: bool) -> dict[int, dict[str, float | None]]:
    """Epoch -> metrics from a ray ``result.json`` (see the module docstring for epochs)."""
    if not file.is_file():
        raise FormatError(f"{file}: not found")
    records = []
    for number, line in enumerate(file.read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise FormatError(f"{file}, line {number}: not valid JSON ({error})") from error
        if not isinstance(record, dict):
            raise FormatError(f"{file}, line {number}: expected a JSON object")
        records.append((number, record))

    iterations = [r.get("training_iteration") for _, r in records]
    if all(i is None for i in iterations):
        first = 0 if has_initial else 1
        epochs = list(range(first, first + len(records)))
    else:
        epochs = []
        for (number, _), iteration in zip(records, iterations):
            if not isinstance(iteration, int) or isinstance(iteration, bool) or iteration < 0:
                raise FormatError(f"{file}, line {number}: training_iteration must be a "
                                  f"non-negative integer, got {iteration!r}")
            if epochs and iteration <= epochs[-1]:
                raise FormatError(f"{file}, line {number}: training_iteration {iteration} "
                                  f"follows {epochs[-1]}; expected increasing iterations")
            epochs.append(iteration)
    return {epoch: _metrics(record, f"{file}, line {number}")
            for epoch, (number, record) in zip(epochs, records)}


def _metrics(record: dict[str, Any], where: str) -> dict[str, float | None]:
    metrics: dict[str, float | None] = {}
    for key in METRIC_KEYS:
        value = record.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise FormatError(f"{where}: {key} must be a number, got {value!r}")
        if value is None or value == NOT_MEASURED or not math.isfinite(value):
            metrics[key] = None
            continue
        if key in ACCURACY_KEYS and not 0 <= value <= 1:
            raise FormatError(f"{where}: {key} = {value} is not a fraction in [0, 1]")
        metrics[key] = value
    return metrics


def _checked_state_dict(
    path: Path, template: Template, max_abs: float
) -> dict[str, torch.Tensor]:
    state = read_state_dict(path)
    missing = [k for k in template if k not in state]
    unexpected = [k for k in state if k not in template]
    if missing or unexpected:
        raise FormatError(f"{path}: keys differ from the architecture in params.json: "
                          f"missing {_few(missing)}, unexpected {_few(unexpected)}")
    for key, (shape, dtype) in template.items():
        tensor = state[key]
        if tuple(tensor.shape) != shape or tensor.dtype != dtype:
            raise FormatError(f"{path}: {key} is {tensor.dtype} {list(tensor.shape)}, "
                              f"expected {dtype} {list(shape)}")
    check_weights(state, path, max_abs)
    return state


def _dataset(src: Path, trials: list[_Trial]) -> dict[str, Any]:
    """The zoo's dataset: our export's own record, else a name found in the dump paths."""
    stored = [t.params.get(DATASET_KEY) for t in trials]
    if isinstance(stored[0], dict) and all(s == stored[0] for s in stored):
        return stored[0]
    dumps = [t.params["dataset::dump"] for t in trials
             if isinstance(t.params.get("dataset::dump"), str)]
    for text in [*dumps, src.resolve().name]:
        for pattern, name in DATASET_PATTERNS:
            if pattern.search(text.lower()):
                return {"name": name, **({"dump": dumps[0]} if dumps else {})}
    return {"name": "unknown", **({"dump": dumps[0]} if dumps else {})}


def _split(trials: list[_Trial], seed: int) -> dict[str, list[str]]:
    stored = {t.entry.id: t.params.get(SPLIT_KEY) for t in trials}
    if all(s in ("train", "val", "test") for s in stored.values()):
        return {part: sorted(i for i, s in stored.items() if s == part)
                for part in ("train", "val", "test")}
    return make_split(list(stored), seed=seed)


def _create_or_resume(out: Path, manifest: dict[str, Any]) -> Zoo:
    if not (out / MANIFEST).exists():
        models = [ModelEntry.from_dict(m) for m in manifest["models"]]
        return Zoo.create(out, models, dataset=manifest["dataset"], split=manifest["split"],
                          extra={"modelzoos": manifest["modelzoos"]})
    zoo = Zoo.open(out)
    if any(zoo.manifest.get(key) != value for key, value in manifest.items()):
        raise FormatError(f"{out} holds another zoo (not an interrupted import of the same "
                          f"source with the same settings); choose a new --out")
    return zoo


# -- small readers -----------------------------------------------------------------------------
def _read_json_object(file: Path) -> dict[str, Any]:
    value = atomic.read_json(file)
    if not isinstance(value, dict):
        raise FormatError(f"{file}: expected a JSON object")
    return value


def _few(keys: Iterable[str], n: int = 3) -> str:
    keys = list(keys)
    if not keys:
        return "none"
    more = f" (and {len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'s' * (n != 1)}"
