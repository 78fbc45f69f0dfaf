"""Mean and 95% confidence half-width: the t quantiles and a hand computation."""

from __future__ import annotations

import math

import pytest

from lifelong.report.stats import Summary, summarize, t_quantile_975


@pytest.mark.parametrize("df, expected", [
    (1, 12.706), (2, 4.303), (3, 3.182), (4, 2.776), (9, 2.262), (10, 2.228), (29, 2.045),
    (30, 2.042), (40, 2.021), (60, 2.000), (120, 1.980), (10_000, 1.960),
])
def test_t_quantile_matches_the_published_table(df, expected):
    assert t_quantile_975(df) == pytest.approx(expected, abs=5e-4)


def test_t_quantile_approximation_joins_the_table_smoothly_and_decreases():
    values = [t_quantile_975(df) for df in range(1, 200)]
    assert all(a > b for a, b in zip(values, values[1:], strict=False))
    assert t_quantile_975(31) == pytest.approx(2.039513, abs=1e-6)  # exact value 2.0395134
    assert t_quantile_975(10**9) == pytest.approx(1.959964, abs=1e-6)


def test_t_quantile_rejects_zero_degrees_of_freedom():
    with pytest.raises(ValueError, match="df=0"):
        t_quantile_975(0)


def test_summary_of_three_values_by_hand():
    summary = summarize([0.5, 0.6, 0.7])
    assert summary.n == 3
    assert summary.mean == pytest.approx(0.6)
    # sample sd = sqrt(((-0.1)^2 + 0 + 0.1^2) / 2) = 0.1
    assert summary.half_width == pytest.approx(4.302653 * 0.1 / math.sqrt(3))
    assert summary.half_width == pytest.approx(0.248414, abs=1e-6)


def test_summary_of_one_value_has_no_interval_and_missing_values_are_ignored():
    assert summarize([0.42, None, float("nan")]) == Summary(0.42, None, 1)
    assert summarize([]) == Summary(None, None, 0)
    assert summarize([1.0, 1.0]).half_width == 0.0
