"""What several commands share.

- :mod:`.rundir`: the experiment directory (``config.yaml``, ``data/``, ``checkpoints/``,
  ``logs/``, ``eval/``), its lock against a second process, atomic writes, building a
  directory beside its final place and renaming it in.
- :mod:`.manifest`: directions (``en-de``) and ``data/manifest.json`` as every command reads
  it (format 2; format 1 upgraded on reading).
- :mod:`.text`: line-aligned UTF-8 files, read and checked (``file:line`` errors).
- :mod:`.progress`: the rich progress bar every long step shows.
- :mod:`.model_init`: a model's initial weights from another model, tensor by tensor, with a
  report (distillation's student, sparse upcycling).
- :mod:`.student_init`: a dense model's weights from an MoE model's (non-expert weights copied
  where shapes agree, the FFN from the experts' mean or one expert): distillation's student,
  THOR with one fixed expert for export.
"""
