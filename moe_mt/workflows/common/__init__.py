"""What several commands share.

- :mod:`.rundir`: the experiment directory (``config.yaml``, ``data/``, ``checkpoints/``,
  ``logs/``, ``eval/``), its lock against a second process, atomic writes, building a
  directory beside its final place and renaming it in.
- :mod:`.progress`: the rich progress bar every long step shows.
"""
