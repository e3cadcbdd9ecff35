"""Bit packing: exact round trips for every width and length, and the documented bit order."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from formats.errors import FormatError, OptionError
from formats.qpk import pack, packed_size, unpack


@settings(max_examples=300, deadline=None)
@given(bits=st.integers(1, 8), data=st.data())
def test_round_trip_any_width_and_length(bits, data):
    n = data.draw(st.integers(0, 200))
    codes = np.array(data.draw(st.lists(st.integers(0, (1 << bits) - 1), min_size=n, max_size=n)), dtype=np.uint8)
    packed = pack(codes, bits)
    assert packed.dtype == np.uint8 and packed.size == packed_size(n, bits) == (n * bits + 7) // 8
    np.testing.assert_array_equal(unpack(packed, bits, n), codes)


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("n", [1, 7, 8, 9, 63, 64, 65, 4097])
def test_round_trip_large_random(bits, n):
    codes = np.random.default_rng(bits * 1000 + n).integers(0, 1 << bits, n, dtype=np.uint8)
    np.testing.assert_array_equal(unpack(pack(codes, bits), bits, n), codes)


def test_bit_order_lsb_first_3_bits():
    # codes 1, 2, 3 at 3 bits: byte0 = 001 | 010<<3 | (011 & 0b11)<<6 = 0b11_010_001; byte1 = 011>>2 = 0
    assert pack(np.array([1, 2, 3], np.uint8), 3).tolist() == [0b11010001, 0b00000000]


def test_bit_order_vectors():
    assert pack(np.array([1, 0, 1, 1, 0, 0, 0, 1, 1], np.uint8), 1).tolist() == [0b10001101, 0b1]
    assert pack(np.array([0xA, 0x5, 0xF], np.uint8), 4).tolist() == [0x5A, 0x0F]
    assert pack(np.array([0b10110, 0b01101], np.uint8), 5).tolist() == [0b10110110, 0b01]
    # padding bits of the last byte are zero
    assert pack(np.array([3], np.uint8), 2).tolist() == [3]


def test_unpack_rejects_wrong_length():
    with pytest.raises(FormatError, match="expected 2"):
        unpack(np.zeros(3, np.uint8), 3, 5)


def test_bits_out_of_range():
    with pytest.raises(OptionError):
        pack(np.zeros(4, np.uint8), 9)
    with pytest.raises(OptionError):
        unpack(b"", 0, 0)
