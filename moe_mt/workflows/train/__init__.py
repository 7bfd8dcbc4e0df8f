"""``moemt train``: fairseq training of the config's model in its run directory.

- :mod:`.trainer`: :func:`train`: resume guard, fairseq arguments, launch (one process, local
  ranks, or torchrun/SLURM), the result read back from the log and checkpoints.
- :mod:`.fairseq_args`: the config turned into fairseq's command line (one place).
- :mod:`.distributed`: launch plans, process groups, a watchdog for hung ranks.
- :mod:`.view`: the live training view (loss, lr, MoE statistics) from fairseq's log lines.
- :mod:`.model_summary`: parameters and forward FLOPs of the model a config trains.
"""

from moe_mt.workflows.train.trainer import TrainResult, train

__all__ = ["TrainResult", "train"]
