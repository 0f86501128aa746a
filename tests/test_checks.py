"""The shared argument checks: types raise TypeError, ranges ValueError, and both name the argument."""
import math

import numpy as np
import pytest

from distill_nb.checks import check_bool, check_positive


def test_check_positive_returns_a_float():
    assert check_positive("rate", 3) == 3.0 and isinstance(check_positive("rate", np.float32(0.5)), float)


@pytest.mark.parametrize("value, error", [(0, ValueError), (-1.5, ValueError), (math.nan, ValueError),
                                          (math.inf, ValueError), (True, TypeError), ("2", TypeError)])
def test_check_positive_rejects(value, error):
    with pytest.raises(error, match="rate must be a finite number > 0"):
        check_positive("rate", value)


def test_check_bool():
    assert check_bool("flag", False) is False
    for value in (1, 0, "yes", None, np.bool_(True)):
        with pytest.raises(TypeError, match="flag must be True or False"):
            check_bool("flag", value)
