"""Verdicts against the strongest baseline, and the frontier's bandwidth rule: known answers."""

from __future__ import annotations

import pytest

from sane.downstream.verdicts import Scored, strongest, versus
from sane.errors import FormatError
from sane.stages.frontier import FrontierPoint, recommended_bandwidth


def _scored(report, selection=None, groups=None):
    selection = report if selection is None else selection
    return Scored(list(selection), list(report), list(groups or [str(i % 5)
                                                                 for i in range(len(report))]))


def test_the_strongest_baseline_is_chosen_on_the_selection_split_not_the_report():
    baselines = {"a": _scored([0.9] * 10, selection=[0.5] * 10),
                 "b": _scored([0.1] * 10, selection=[0.6] * 10)}
    assert strongest(baselines) == "b"
    assert strongest({}) is None and strongest({"a": _scored([])}) is None


def test_versus_gives_the_difference_its_interval_and_words():
    ours = _scored([0.80 + 0.001 * i for i in range(10)])
    row = versus(ours, "noise", _scored([0.70 + 0.001 * i for i in range(10)]))
    assert row.difference == pytest.approx(0.1) and row.verdict == "beat"
    assert row.interval[0] < 0.1 < row.interval[1]
    assert "beat noise (+0.1000" in row.sentence()
    assert versus(ours, "x", _scored([0.9] * 10)).verdict == "lose to"
    assert versus(ours, "x", ours).verdict == "level with"
    with pytest.raises(FormatError, match="one entry per model"):
        Scored([1.0], [1.0, 2.0], ["a"])
    assert (ours + ours).report == ours.report * 2


def _point(bandwidth, kept_sane, kept_noise, prompts=0.8):
    return FrontierPoint(bandwidth, bandwidth * 10, prompts, prompts, {}, {},
                         {"SANE": kept_sane, "noise": kept_noise}, None, None)


def test_the_bandwidth_rule_takes_the_largest_lead_among_good_bandwidths():
    points = [_point(0.1, 0.80, 0.79), _point(0.5, 0.78, 0.75), _point(1.0, 0.60, 0.40)]
    # 1.0 leads most but keeps less than 95 % of the prompts' 0.8
    assert recommended_bandwidth(points) == 0.5
    # SANE leads nowhere: the smallest good bandwidth
    assert recommended_bandwidth([_point(0.1, 0.8, 0.81), _point(0.5, 0.78, 0.79)]) == 0.1
    # nothing is good: the smallest bandwidth
    assert recommended_bandwidth([_point(0.5, 0.5, 0.4), _point(0.1, 0.5, 0.4)]) == 0.1
