"""Bit packing: exact round trips for every width and length, and the documented bit order."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qpack.formats.errors import FormatError, OptionError
from qpack.formats.qpk import pack, packed_size, unpack
from qpack.formats.qpk.bitstream import code_dtype


def _by_bit(codes: np.ndarray, bits: int) -> list[int]:
    """The stream FORMAT.md defines, built one bit at a time: code i's bit b is stream bit i * bits + b."""
    out = [0] * ((len(codes) * bits + 7) // 8)
    for i, c in enumerate(codes.tolist()):
        for b in range(bits):
            if c >> b & 1:
                out[(i * bits + b) // 8] |= 1 << ((i * bits + b) % 8)
    return out


@settings(max_examples=400, deadline=None)
@given(bits=st.integers(1, 16), data=st.data())
def test_round_trip_any_width_and_length(bits, data):
    n = data.draw(st.integers(0, 200))
    dtype = code_dtype(bits)
    codes = np.array(data.draw(st.lists(st.integers(0, (1 << bits) - 1), min_size=n, max_size=n)), dtype=dtype)
    packed = pack(codes, bits)
    assert packed.dtype == np.uint8 and packed.size == packed_size(n, bits) == (n * bits + 7) // 8
    assert packed.tolist() == _by_bit(codes, bits)
    back = unpack(packed, bits, n)
    assert back.dtype == dtype
    np.testing.assert_array_equal(back, codes)


@pytest.mark.parametrize("bits", range(1, 17))
@pytest.mark.parametrize("n", [1, 7, 8, 9, 63, 64, 65, 4097])
def test_round_trip_large_random(bits, n):
    codes = np.random.default_rng(bits * 1000 + n).integers(0, 1 << bits, n, dtype=code_dtype(bits))
    np.testing.assert_array_equal(unpack(pack(codes, bits), bits, n), codes)


def test_wide_codes_take_16_bit_arrays_and_little_endian_words():
    assert code_dtype(8) is np.uint8 and code_dtype(9) is np.uint16
    # 16 bits: little-endian words; 12 bits: codes 0xABC, 0x123 -> 0xBC, 0x3A, 0x12
    assert pack(np.array([0x1234, 0xFFFF], np.uint16), 16).tolist() == [0x34, 0x12, 0xFF, 0xFF]
    assert pack(np.array([0xABC, 0x123], np.uint16), 12).tolist() == [0xBC, 0x3A, 0x12]


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
        pack(np.zeros(4, np.uint8), 17)
    with pytest.raises(OptionError):
        unpack(b"", 0, 0)
