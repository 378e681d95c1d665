"""Verdicts: generated models against copy baselines, in words an interval allows.

Each side is a set of models scored on the selection split and on the report split, each
model grouped with its prompt (the nearest one, in aligned weight space). The baseline a
verdict is against is the *strongest* one, the baseline whose models score highest on the
selection split (chosen there, like everything else). The difference of mean report scores
gets a 95 % interval from a bootstrap over prompts (a drawn prompt brings its models of
both sides: :func:`sane.downstream.intervals.difference_interval`), and the words follow
the interval: "beat", "level with" or "lose to".
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from sane.downstream.intervals import difference_interval, verdict
from sane.errors import FormatError


@dataclass(frozen=True)
class Scored:
    """Models of one method: ``selection`` and ``report`` scores and the ``groups`` (prompt)
    of each, ``[n]`` alike."""

    selection: list[float]
    report: list[float]
    groups: list[str]

    def __post_init__(self) -> None:
        if not len(self.selection) == len(self.report) == len(self.groups):
            raise FormatError("selection, report and groups must have one entry per model")

    def __add__(self, other: Scored) -> Scored:
        return Scored(self.selection + other.selection, self.report + other.report,
                      self.groups + other.groups)

    @property
    def report_mean(self) -> float:
        return _mean(self.report)

    @property
    def selection_mean(self) -> float:
        return _mean(self.selection)


@dataclass(frozen=True)
class Versus:
    """Ours against ``baseline``: the ``difference`` of mean report scores, its 95 %
    ``interval`` (None where it is undefined: fewer than 3 prompts) and the ``verdict``
    ("beat", "level with", "lose to")."""

    baseline: str
    difference: float
    interval: tuple[float, float] | None
    verdict: str

    def sentence(self, ours: str = "SANE's models") -> str:
        return (f"{ours} {self.verdict} {self.baseline} ({self.difference:+.4f}, "
                f"{self.interval_text()})")

    def interval_text(self) -> str:
        """"95 % interval [low, high]", or why there is none."""
        if self.interval is None:
            return "no interval: fewer than 3 prompts"
        low, high = self.interval
        return f"95 % interval [{low:+.4f}, {high:+.4f}]"


def strongest(baselines: Mapping[str, Scored]) -> str | None:
    """The baseline of highest mean selection score (None when there is none)."""
    usable = {name: s for name, s in baselines.items() if s.selection}
    return max(usable, key=lambda name: usable[name].selection_mean) if usable else None


def versus(ours: Scored, name: str, theirs: Scored, *, seed: int = 0) -> Versus:
    """``ours`` against the baseline ``theirs`` (named ``name``) on the report split."""
    interval = difference_interval(ours.report, ours.groups, theirs.report, theirs.groups,
                                   seed=seed)
    return Versus(name, ours.report_mean - theirs.report_mean,
                  None if math.isnan(interval[0]) else interval, verdict(interval))


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")
