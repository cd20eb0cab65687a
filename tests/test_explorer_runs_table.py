"""The runs table's filter language (app/filters.py: terms read, terms that cannot be) and
its order (app/table_sort.py: NaN and values not recorded last either way)."""

from __future__ import annotations

import math

import pytest
from helpers.explorer import APP

KEYS = {"lr", "batch_size", "last_loss", "status", "name"}


@pytest.fixture
def filters(monkeypatch):
    """app/filters.py, imported as Streamlit imports it (app/ on sys.path)."""
    monkeypatch.syspath_prepend(str(APP.parent))
    import filters

    return filters


@pytest.fixture
def table_sort(monkeypatch):
    monkeypatch.syspath_prepend(str(APP.parent))
    import table_sort

    return table_sort


def test_nan_and_values_not_recorded_sort_last_either_way(table_sort):
    values = [2.5, None, math.nan, 0.5, 1.5, None, math.nan, 0.5]
    assert table_sort.order(values) == [3, 7, 4, 0, 2, 6, 1, 5]
    assert table_sort.order(values, descending=True) == [0, 4, 3, 7, 2, 6, 1, 5]
    assert table_sort.order(["b", None, "a"]) == [2, 0, 1]


def test_words_and_comparisons_with_or_without_spaces(filters):
    parsed = filters.parse("basics lr < 0.01 batch_size=16  status != failed last_loss>=2",
                           KEYS)
    assert parsed.words == ["basics"]
    assert parsed.comparisons == [("lr", "<", "0.01"), ("batch_size", "=", "16"),
                                  ("status", "!=", "failed"), ("last_loss", ">=", "2")]
    assert parsed.problems == []
    assert filters.parse("lr==0.01", KEYS).comparisons == [("lr", "=", "0.01")]


@pytest.mark.parametrize("text, problem", [
    ("=3", "`=3`: no column or config key before ="),
    ("lr<", "`lr<`: nothing to compare lr with after <"),
    ("lr<abc", "`lr<abc`: < needs a number, not abc"),
    ("bogus=3", "`bogus=3`: no column or config key is named bogus"),
])
def test_a_term_that_cannot_be_read_is_left_out_and_named(filters, text, problem):
    parsed = filters.parse(text, KEYS)
    assert parsed.words == [] and parsed.comparisons == []
    [said] = parsed.problems
    assert said.startswith(problem)
    # The terms before it are read as ever.
    parsed = filters.parse(f"basics lr>1 {text}", KEYS)
    assert parsed.words == ["basics"] and parsed.comparisons == [("lr", ">", "1")]
    assert len(parsed.problems) == 1


def test_comparisons_hold_as_numbers_or_as_text(filters):
    assert filters.holds(0.005, "<", "0.01") and not filters.holds(0.05, "<", "0.01")
    assert filters.holds(16, "=", "16.0") and filters.holds("Failed", "=", "failed")
    assert filters.holds("finished", "!=", "failed")
    assert not filters.holds("finished", "<", "3")  # no order between text and a number
    assert not filters.holds(None, "!=", "1")  # not recorded: nothing holds
    assert filters.holds(math.nan, "!=", "1") and not filters.holds(math.nan, "<", "1")


def test_a_run_matches_when_every_term_holds(filters):
    wanted = filters.parse("base lr<0.01", KEYS)
    assert filters.matches(wanted, "baseline 3f2a bundled", {"lr": 0.002})
    assert not filters.matches(wanted, "baseline 3f2a bundled", {"lr": 0.02})
    assert not filters.matches(wanted, "other 3f2a bundled", {"lr": 0.002})
