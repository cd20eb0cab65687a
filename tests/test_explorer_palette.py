"""The run colours (app/charts.py PALETTE): lines readable on the light and the dark theme
(WCAG 1.4.11: 3:1 against the background), and runs told apart even twenty at a time."""

from __future__ import annotations

import itertools

import pytest
from helpers.colour import THEME_BACKGROUNDS, chroma, contrast, de2000
from helpers.explorer import APP


@pytest.fixture
def charts(monkeypatch):
    """app/charts.py, imported as Streamlit imports it (app/ on sys.path)."""
    monkeypatch.syspath_prepend(str(APP.parent))
    import charts

    return charts


@pytest.mark.parametrize("theme", list(THEME_BACKGROUNDS))
def test_every_run_colour_and_the_hover_rule_stand_3_to_1_on_the_page(charts, theme):
    background = THEME_BACKGROUNDS[theme]
    for color in (*charts.PALETTE, charts.RULE_COLOR):
        assert contrast(color, background) >= 3, (color, theme)


def test_no_run_is_drawn_in_grey(charts):
    # A grey line reads as a secondary or superseded one, not as a run of its own.
    assert min(chroma(c) for c in charts.PALETTE) >= 30


def test_twenty_runs_get_colours_told_apart_and_neighbours_the_most(charts):
    palette = charts.PALETTE
    assert len(set(palette)) == len(palette) == 20
    # CIEDE2000: about 2 is just noticeable; lines of different runs need far more.
    assert min(de2000(a, b) for a, b in itertools.combinations(palette, 2)) >= 15
    # Runs created one after another (ranks wrap around the palette) differ the most.
    assert min(de2000(palette[i], palette[(i + 1) % len(palette)])
               for i in range(len(palette))) >= 40
