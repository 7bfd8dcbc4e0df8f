"""The ranges numeric keys accept: one :class:`Bound` per key, checked when a config is loaded
(``moe_mt.config.BOUNDS``) or, for a ``model.moe.*`` key, where its option is declared
(:class:`moe_mt.models.families.OptionSpec`). Imports nothing of moemt's, so that both can."""

from __future__ import annotations

from typing import NamedTuple


class Bound(NamedTuple):
    """The values a numeric key accepts: ``low <= value <= high`` (``<`` where open), None for
    no bound."""

    low: float | None = None
    high: float | None = None
    open_low: bool = False
    open_high: bool = False

    def refuses(self, value: float) -> bool:
        below = self.low is not None and (value <= self.low if self.open_low else value < self.low)
        above = self.high is not None and (
            value >= self.high if self.open_high else value > self.high
        )
        return below or above

    def describe(self) -> str:
        if self.high is None:
            return f"must be {'>' if self.open_low else 'at least'} {self.low}"
        left, right = "(" if self.open_low else "[", ")" if self.open_high else "]"
        return f"must be in {left}{self.low}, {self.high}{right}"


AT_LEAST_0, AT_LEAST_1, POSITIVE = Bound(0), Bound(1), Bound(0, open_low=True)
ALL_OR_AT_LEAST_0 = Bound(-1)  # -1 means "all" / "never" where fairseq says so
PROBABILITY = Bound(0.0, 1.0)
