"""The charts' tick labels (app/charts.py axis_format): one notation per axis, plain unless
the range needs more. What Vega draws with them is checked in the browser
(test_explorer_browser.py::test_tick_labels_are_plain_numbers_unless_the_range_needs_more)."""

from __future__ import annotations

import pytest
from helpers.explorer import APP


@pytest.fixture
def charts(monkeypatch):
    """app/charts.py, imported as Streamlit imports it (app/ on sys.path)."""
    monkeypatch.syspath_prepend(str(APP.parent))
    import charts

    return charts


@pytest.mark.parametrize("low, high, log_scale, notation", [
    (0.0, 100.0, False, "~f"),          # 80, 100: never 8e+1, 1e+2
    (2.4, 61.0, False, "~f"),
    (0.0012, 0.002, False, "~f"),       # an LR: 0.0012
    (9e4, 1.2e5, False, "~s"),          # tokens/s: 100k, 120k
    (0.0, 1e9, False, "~s"),            # an exploded loss: 500M, 1G
    (1e-6, 5e-4, False, "~e"),          # a small LR: 1e-4
    (0.3, 60.0, True, "~g"),            # a log axis within plain digits: 0.3, 3, 30
    (1e-5, 10.0, True, "~e"),           # a log axis past them: 1e-5 ... 1e+1
])
def test_an_axis_is_plain_unless_its_range_needs_si_or_scientific(charts, low, high,
                                                                  log_scale, notation):
    assert charts.axis_format(low, high, log_scale) == notation
