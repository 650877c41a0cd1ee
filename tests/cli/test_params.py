"""The shared click parameter types, and their argparse form used by the benchmarks."""

from __future__ import annotations

import argparse

import click
import pytest

from testbed.cli.params import DURATION, LOGIT_SCALE, PRUNE_MARGIN, argparse_type


@pytest.mark.parametrize(("kind", "text", "value"), [
    (PRUNE_MARGIN, "off", None), (PRUNE_MARGIN, "0", 0.0), (PRUNE_MARGIN, " OFF ", None), (PRUNE_MARGIN, "1.5", 1.5),
    (LOGIT_SCALE, "auto", None), (LOGIT_SCALE, "0.6", 0.6), (DURATION, "2ms", 2000.0), (DURATION, "500us", 500.0),
])
def test_values_and_words_convert(kind, text, value):
    assert kind.convert(text, None, None) == value


@pytest.mark.parametrize(("kind", "text", "words"), [
    (PRUNE_MARGIN, "-1", "neither a margin ≥ 0 (model units) nor 'off'"),
    (PRUNE_MARGIN, "nan", "neither a margin ≥ 0"),
    (LOGIT_SCALE, "0", "neither a finite λ > 0 nor 'auto'"),
    (LOGIT_SCALE, "inf", "neither a finite λ > 0"),
    (DURATION, "5", "is not a positive duration"),
])
def test_bad_values_are_usage_errors_in_click_and_argparse(kind, text, words):
    with pytest.raises(click.BadParameter) as in_click:
        kind.convert(text, None, None)
    with pytest.raises(argparse.ArgumentTypeError) as in_argparse:
        argparse_type(kind)(text)
    assert words in str(in_click.value) and str(in_argparse.value) == in_click.value.message
