"""Numerics edges: rounding, saturation, wrap, bias split, the SDK metric."""
import numpy as np
import pytest

from arch import numerics as nx
from arch.machine import REFERENCE, SMALL


def test_float_to_fixed_rounds_half_to_even_and_saturates():
    q, over = nx.float_to_fixed([0.5 / 256, 1.5 / 256, -0.5 / 256, 127.99, 128.0, -128.0, -200.0], 8)
    assert q.tolist() == [0, 2, 0, 32765, 32767, -32768, -32768]
    assert over == 2          # 128.0 and -200.0
    with pytest.raises(ValueError, match="NaN"):
        nx.float_to_fixed([np.nan], 8)


def test_round_shift_is_half_up_for_both_signs():
    acc = np.array([3, 2, 1, -1, -2, -3, 5, -5])
    assert nx.round_shift(acc, 1).tolist() == [2, 1, 1, 0, -1, -1, 3, -2]
    assert nx.round_shift(acc, 0).tolist() == acc.tolist()


def test_requantize_saturates_counts_and_relu():
    acc = np.array([1 << 24, -(1 << 24), 256 * 5, -256 * 5])
    y, over = nx.requantize(acc, 8, nx.ACT_NONE)
    assert y.tolist() == [32767, -32768, 5, -5] and over == 2
    y, over = nx.requantize(acc, 8, nx.ACT_RELU)
    assert y.tolist() == [32767, 0, 5, 0] and over == 1     # below the range ReLU gives 0 either way
    assert y.dtype == np.int16


def test_wrap_is_twos_complement():
    bits = 48
    x = np.array([(1 << 47) - 1, 1 << 47, -(1 << 47), -(1 << 47) - 1], dtype=np.int64)
    assert nx.wrap(x, bits).tolist() == [(1 << 47) - 1, -(1 << 47), -(1 << 47), (1 << 47) - 1]


def test_bias_split_join_round_trip():
    b = np.array([0, 1, -1, 65535, -65536, (1 << 31) - 1, -(1 << 31)], dtype=np.int64)
    lo, hi = nx.split_bias(b)
    assert lo.dtype == np.int16 and hi.dtype == np.int16
    assert nx.join_bias(lo, hi).tolist() == b.tolist()


def test_frac_for_range():
    assert nx.frac_for_range(1.0) == 14          # 1.0 * 2**14 = 16384 fits, 2**15 does not
    assert nx.frac_for_range(0.001) == 24        # capped
    assert nx.frac_for_range(300.0) == 6
    with pytest.raises(ValueError):
        nx.frac_for_range(float("inf"))


def test_max_reduction_cannot_overflow_the_accumulator():
    for cfg in (REFERENCE, SMALL):
        worst = cfg.max_reduction * (1 << 30) + (1 << (cfg.bias_bits - 1))
        assert worst < 1 << (cfg.acc_bits - 1)


def test_sdk_metric():
    mean, mx = nx.sdk_error_metric([1.0, 2.0, 3.0], [1.0, 2.0, 4.0])
    assert mean == pytest.approx(100 * (1 / 3) / 4) and mx == pytest.approx(25.0)
