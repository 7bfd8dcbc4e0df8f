"""``moemt distill``: a dense student learns from a trained (MoE) teacher run.

- :mod:`.distillation`: :func:`distill`: teacher checkpoint, word- or sequence-level data
  (teacher translations written resumably), the student's training, the report (gain kept).
- :mod:`.student_init`: the student's initial weights from the teacher's (non-expert weights
  copied where shapes agree, the FFN from the experts' mean or one expert), each logged.
"""

from moe_mt.workflows.distill.distillation import DistillResult, distill

__all__ = ["DistillResult", "distill"]
