"""Import and export zoos in the Model Zoos layout (Schürholt et al., NeurIPS 2022).

A Model Zoos directory is the output folder of a ray-tune run: one folder per trained model
("trial"), each holding

* ``params.json``: the model's config with ``::`` keys (``model::type``, ``model::nlin``,
  ``model::init_type``, ``model::dropout``, ``model::channels_in``, ``model::o_dim``,
  ``optim::optimizer``, ``optim::lr``, ``optim::wd``, ``training::batchsize``, ``seed``...);
* ``result.json``: JSON lines, one per tune iteration, with ``train_loss``, ``train_acc``,
  ``test_loss``, ``test_acc`` (fractions), ``val_*`` when a validation set existed, and ray's
  own keys (``training_iteration``, ``time_total_s``, ``config``...);
* ``checkpoint_<N>/checkpoints`` (newer ray: ``checkpoint_<N:06d>``): the state dict saved
  with ``torch.save`` after iteration ``N``.

:mod:`sane.zoo.modelzoos.params` maps a trial's ``params.json`` to our architectures and
recipes and back, :mod:`sane.zoo.modelzoos.reader` imports such a directory as a zoo, and
:mod:`sane.zoo.modelzoos.writer` exports a zoo in this layout.
"""

from sane.zoo.modelzoos.params import architecture_from_params, params_from_entry
from sane.zoo.modelzoos.reader import (
    DEFAULT_MAX_ABS,
    ImportReport,
    Skipped,
    import_modelzoos,
)
from sane.zoo.modelzoos.writer import export_modelzoos

__all__ = [
    "DEFAULT_MAX_ABS",
    "ImportReport",
    "Skipped",
    "architecture_from_params",
    "export_modelzoos",
    "import_modelzoos",
    "params_from_entry",
]
