"""The stages of a SANE study over files on disk, each behind one ``sane`` command: property
prediction (:mod:`~sane.stages.probe`), sampling (:mod:`~sane.stages.sample`) and fine-tuning
of samples (:mod:`~sane.stages.finetune`). Each reads a run or samples directory, writes its
outputs, reuses an identical finished request, and returns a result object; the algorithms
they apply live in :mod:`sane.downstream`."""
