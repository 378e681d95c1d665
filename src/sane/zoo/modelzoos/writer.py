"""Export a zoo in the Model Zoos layout, the one :mod:`sane.zoo.modelzoos.reader` imports.

Every model becomes a trial folder whose ``params.json`` comes from
:func:`~sane.zoo.modelzoos.params.params_from_entry`, so that importing an export gives back the
same zoo: the same ids, split, architectures, recipes, metrics and state dicts bit for bit.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tqdm import tqdm

from sane import atomic
from sane.errors import FormatError
from sane.zoo.modelzoos.params import params_from_entry
from sane.zoo.storage import MANIFEST, METRIC_KEYS, Zoo


def export_modelzoos(zoo_dir: str | Path, out: str | Path, *, progress: bool = True) -> None:
    """Write the zoo at ``zoo_dir`` in the Model Zoos layout under ``out`` (new or empty).

    One trial folder per model (its original folder name when the zoo was imported, else
    ``NN_tune_trainable_<id>``) with ``params.json``, ``result.json`` (one line per recorded
    epoch, ``training_iteration`` = epoch, metrics that are known) and
    ``checkpoint_<epoch:06d>/checkpoints`` for every stored checkpoint.
    """
    zoo = Zoo.open(zoo_dir)
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FormatError(f"{out}: exists and is not an empty directory")
    names = zoo.manifest.get("modelzoos", {}).get("trials", {})
    split_of = {i: part for part, ids in zoo.split.items() for i in ids}
    for entry in tqdm(zoo.models, desc="exporting", unit="model",
                      disable=None if progress else True):
        name = names.get(entry.id, f"NN_tune_trainable_{entry.id}")
        if not isinstance(name, str) or name in ("", ".", "..") or Path(name).name != name:
            raise FormatError(f"{zoo.path / MANIFEST}: trial folder name {name!r} for model "
                              f"{entry.id} is not a plain folder name")
        folder = out / name
        params = params_from_entry(entry, split_of[entry.id], zoo.dataset)
        atomic.write_json(folder / "params.json", params)
        rows = zoo.metrics(entry.id)
        lines = [{"training_iteration": row["epoch"],
                  **{k: row[k] for k in METRIC_KEYS if row.get(k) is not None}} for row in rows]
        atomic.write_text(folder / "result.json", "".join(json.dumps(x) + "\n" for x in lines))
        for epoch in zoo.checkpoint_epochs(entry.id):
            state = zoo.load_checkpoint(entry.id, epoch)
            atomic.atomic_write(folder / f"checkpoint_{epoch:06d}" / "checkpoints",
                                lambda tmp, state=state: torch.save(state, tmp))
