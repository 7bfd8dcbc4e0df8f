"""``moemt distill``: a dense student learns from a trained (MoE) teacher run.

- :mod:`.distillation`: :func:`distill`: teacher checkpoint, word- or sequence-level data
  (teacher translations written resumably), the student's training, the report (gain kept).

The student's initial weights from the teacher's are :mod:`moe_mt.workflows.common.student_init`
(export makes THOR with one fixed expert dense with the same copy).
"""

from moe_mt.workflows.distill.distillation import DistillResult, distill

__all__ = ["DistillResult", "distill"]
