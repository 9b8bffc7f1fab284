"""The stop rule: presence, area bounds, and patience over dips."""

import numpy as np
import pytest

from propsam.engine.propagation import PropagationOptions, _judge


def planes(*areas):
    out = []
    for a in areas:
        p = np.zeros((20, 20), np.float32)
        p.flat[:a] = 1.0
        out.append(p)
    return out


@pytest.mark.parametrize("presence, patience, expected", [
    ([1, 0, 1, 1], 1, (1, True)),  # today's rule: the first absent slice ends the object
    ([1, 0, 1, 1], 2, (4, False)),  # a one-slice dip is looked past, and kept
    ([1, 0, 0, 1], 2, (1, True)),  # two in a row end it
    ([1, 1, 0], 2, (2, False)),  # a pending failure at the window's end: the next round looks again
    ([0], 2, (0, True)),  # nothing accepted: ended (never loops on the same guide)
])
def test_patience(presence, patience, expected):
    opt = PropagationOptions(stop_patience=patience)
    assert _judge(planes(*[30] * len(presence)), np.array(presence, float), 3, np.inf, opt)[:2] == expected


def test_area_bounds_fail_a_slice():
    opt = PropagationOptions()
    assert _judge(planes(30, 2, 30), np.ones(3), 3, np.inf, opt) == (1, True, 2)  # too small
    assert _judge(planes(30, 90, 30), np.ones(3), 3, 60, opt) == (1, True, 2)  # a leak: larger than allowed
    assert _judge(planes(30, 90, 30), np.ones(3), 3, np.inf, opt) == (3, False, 3)
