"""The ans codec: round trips, size against the entropy bound, determinism, hostile streams, the
context model on real weights, containers written with it, and rate-aware rounding."""

from __future__ import annotations

import signal
import struct
import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from qpack.converter.cli import app
from qpack.converter.convert import convert
from qpack.converter.cost import tensor_cost
from qpack.converter.measure import context_entropy_bits, entropy_bits
from qpack.converter.policy import Policy
from qpack.converter.quant import get_quantizer
from qpack.formats.errors import FormatError, OptionError
from qpack.formats.onnx_model import OnnxModel
from qpack.formats.qpk import ANS, RAW, BlobKind, CodeContext, Grouping, QpkReader, ans, pack, spec
from qpack.formats.qpk.bitstream import code_dtype
from qpack.formats.registry import open_model

RNG = np.random.default_rng(20261127)


def laplace_codes(n: int, bits: int, spread: float, rng: np.random.Generator = RNG) -> np.ndarray:
    top = (1 << bits) - 1
    return np.clip(np.rint(rng.laplace(top / 2, spread, n)), 0, top).astype(code_dtype(bits))


def h0_bytes(codes: np.ndarray, bits: int) -> float:
    return entropy_bits(np.bincount(codes, minlength=1 << bits)) * codes.size / 8


@contextmanager
def deadline(seconds: int) -> Iterator[None]:
    """Fail instead of hanging: decoding is bounded by the code count, whatever the stream says."""
    def fire(*_: object) -> None:
        raise TimeoutError(f"took more than {seconds} s")

    old = signal.signal(signal.SIGALRM, fire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def round_trip(codes: np.ndarray, bits: int, model: ans.Model | None = None) -> bytes:
    stream = ans.encode_codes(codes, bits, model)
    assert np.array_equal(ans.decode_raw(stream, bits, codes.size), codes)
    # and through the codec interface, on packed bytes, as the writer and reader use it
    ctx = CodeContext(bits, codes.size, (codes.size,), Grouping())
    raw = memoryview(pack(codes, bits))
    if model is None:
        assert ANS.encode(raw, BlobKind.CODES, ctx) == stream
    assert bytes(ANS.decode(memoryview(stream), raw.nbytes, ctx)) == raw.tobytes()
    return stream


CONTEXT = ans.Model(contexts=4, window=2, offset=1, magnitude=0, center=0)


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("n", [0, 1, 2, 7, 13, 1001, 65_537])
def test_round_trip_every_width_and_odd_lengths(bits: int, n: int):
    codes = laplace_codes(n, bits, max(0.4, (1 << bits) / 12))
    round_trip(codes, bits)
    round_trip(codes, bits, ans.Model())
    round_trip(codes, bits, ans.Model(contexts=3, window=1, offset=0, magnitude=0, center=(1 << bits) // 2))
    if bits >= 2:
        round_trip(codes, bits, ans.Model(contexts=16, window=8, offset=0, magnitude=1, center=0))


@pytest.mark.parametrize("bits", [1, 4, 8])
def test_adversarial_streams(bits: int):
    n = 100_000
    for codes in (np.zeros(n, np.uint8), np.full(n, (1 << bits) - 1, np.uint8),
                  RNG.integers(0, 1 << bits, n).astype(np.uint8),  # uniform: nothing to gain
                  np.tile(np.arange(1 << bits, dtype=np.uint8), n >> bits),  # every symbol, in order
                  np.where(RNG.random(n) < 1e-4, (1 << bits) - 1, 0).astype(np.uint8)):  # one rare symbol
        stream = round_trip(codes, bits)
        assert len(stream) <= h0_bytes(codes, bits) * 1.003 + 2 + (1 << bits) + 16
    single = ans.encode_codes(np.zeros(n, np.uint8), bits)
    assert len(single) <= 16  # one symbol costs nothing per code


@pytest.mark.parametrize("bits", range(1, 9))
def test_order0_within_the_entropy_bound(bits: int):
    """Stored size <= (order-0 entropy + table) x 1.003 at every width, on realistic sizes."""
    for n, spread in ((200_000, max(0.3, (1 << bits) / 10)), (1_000_000, max(0.2, (1 << bits) / 40))):
        codes = laplace_codes(n, bits, spread)
        stream = ans.encode_codes(codes, bits, ans.Model())
        table = int(ans.table_bytes(np.bincount(codes, minlength=1 << bits))[0])
        bound = (h0_bytes(codes, bits) + table) * 1.003
        assert len(stream) <= bound, (bits, n, len(stream), bound)
        # the writer keeps the packed stream when coding does not pay (near-uniform 1-bit codes)
        from qpack.formats.qpk import encode

        codec, stored, _ = encode(pack(codes, bits), BlobKind.CODES, ANS, ctx=CodeContext(bits, n, (n,), Grouping()))
        assert stored.nbytes <= codes.size * bits / 8 + 1
        assert codec == (ANS.id if len(stream) < pack(codes, bits).nbytes else RAW.id)


@pytest.mark.parametrize("bits", range(9, 17))
@pytest.mark.parametrize("n", [0, 1, 2, 7, 13, 1001, 65_537])
def test_wide_codes_round_trip_order0(bits: int, n: int):
    """Codes of 9..16 bits (fine steps): order-0 tables with 16-bit spans; context models are refused."""
    codes = laplace_codes(n, bits, 40.0)
    stream = round_trip(codes, bits)
    assert stream[3] == 0  # model: order 0
    with pytest.raises(ValueError, match="at most 8 bits"):
        ans.encode_codes(codes, bits, CONTEXT)


@pytest.mark.parametrize("bits", [12, 16])
def test_wide_adversarial_streams(bits: int):
    """All one symbol, uniform over every code, every symbol in turn, one rare symbol: coded or, where
    more codes are present than a table has slots, given back to the writer as not smaller."""
    from qpack.formats.qpk import encode

    n, top = 100_000, (1 << bits) - 1
    wide = code_dtype(bits)
    for codes in (np.zeros(n, wide), np.full(n, top, wide), RNG.integers(0, top + 1, n).astype(wide),
                  np.tile(np.arange(top + 1, dtype=wide), -(-n // (top + 1)))[:n],
                  np.where(RNG.random(n) < 1e-4, top, 0).astype(wide)):
        distinct = np.unique(codes).size
        stream = ans.encode_codes(codes, bits)
        if distinct > 1 << 14:  # past what 2^15 slots hold with room to normalize: packed
            assert stream is None
            codec, stored, _ = encode(pack(codes, bits), BlobKind.CODES, ANS, ctx=CodeContext(bits, n, (n,), Grouping()))
            assert codec == RAW.id and stored.nbytes == pack(codes, bits).nbytes
            continue
        assert stream is not None and np.array_equal(ans.decode_raw(stream, bits, n), codes)
        table = int(ans.table_bytes(np.bincount(codes, minlength=1 << bits))[0])
        assert len(stream) <= (h0_bytes(codes, bits) + table) * 1.003 + 16, (distinct, len(stream))


def test_wide_tables_share_a_weight_over_runs_of_codes():
    """A 12-bit spread over a thousand codes: the table stores a weight per run of 2^shift codes,
    costs a fraction of a weight per code, and still decodes exactly."""
    codes = laplace_codes(200_000, 12, 300.0)
    stream = ans.encode_codes(codes, 12)
    first, span, shift = struct.unpack_from("<HHB", stream, 4)
    assert shift >= 1 and first == codes.min() and first + span == codes.max()
    np.testing.assert_array_equal(ans.decode_raw(stream, 12, codes.size), codes)
    exact = int(ans.table_bytes(np.bincount(codes, minlength=1 << 12))[0])
    assert len(stream) < h0_bytes(codes, 12) + exact  # the runs save more than their coarser weights cost
    bad = bytearray(stream)
    bad[8] = 16  # shift past 15
    with pytest.raises(FormatError, match="runs of 2\\^16"):
        ans.decode_raw(bytes(bad), 12, codes.size)


def test_wide_stream_with_a_context_model_is_refused():
    stream = bytearray(ans.encode_codes(laplace_codes(500, 4, 2.0), 4, CONTEXT))
    stream[1] = 12  # claims 12-bit codes
    with pytest.raises(FormatError, match="neighbourhood model"):
        ans.decode_raw(bytes(stream), 12, 500)


def test_deterministic():
    codes = laplace_codes(300_001, 5, 3.0)
    assert ans.encode_codes(codes, 5) == ans.encode_codes(codes.copy(), 5)


def _streams() -> Iterator[tuple[str, bytes, int, int]]:
    """(what, stream, bits, count) of valid streams, with each kind of model."""
    codes = laplace_codes(20_000, 4, 1.5)
    yield "order 0", ans.encode_codes(codes, 4, ans.Model()), 4, codes.size
    yield "context", ans.encode_codes(codes, 4, CONTEXT), 4, codes.size
    wide = laplace_codes(5_000, 8, 20.0)
    yield "8 bits", ans.encode_codes(wide, 8), 8, wide.size


def _decode(stream: bytes, bits: int, count: int) -> None:
    ans.decode_codes(memoryview(stream), bits, count)


@pytest.mark.parametrize("what, stream, bits, count", list(_streams()))
def test_corrupt_streams_rejected(what: str, stream: bytes, bits: int, count: int):
    with deadline(60):
        for cut in sorted({0, 1, 3, 4, 8, 9, 12, len(stream) // 2, len(stream) - 2, len(stream) - 1}):
            with pytest.raises(FormatError):
                _decode(stream[:cut], bits, count)
        with pytest.raises(FormatError):
            _decode(stream + b"\0\0", bits, count)  # a word too many
        with pytest.raises(FormatError):
            _decode(stream, bits, count - 1)  # fewer codes than coded
        rng = np.random.default_rng(7)
        flipped = 0
        for pos in rng.choice(len(stream), size=min(200, len(stream)), replace=False):
            bad = bytearray(stream)
            bad[pos] ^= 1 << int(rng.integers(8))
            try:
                _decode(bytes(bad), bits, count)
            except FormatError:
                flipped += 1
        assert flipped >= 0.98 * min(200, len(stream))  # the end state catches damage to the words


def test_hostile_headers_and_tables():
    k = 16
    good = ans.encode_codes(laplace_codes(1000, 4, 1.5), 4, CONTEXT)

    def edit(pos: int, value: int, *more: tuple[int, int]) -> bytes:
        b = bytearray(good)
        for p, v in ((pos, value), *more):
            b[p] = v
        return bytes(b)

    cases = {
        "version": edit(0, 2), "bits": edit(1, 5), "precision 0": edit(2, 0), "precision 16": edit(2, 16),
        "model 2": edit(3, 2), "window 0": edit(4, 0), "window 9": edit(4, 9), "contexts 1": edit(5, 1),
        "contexts 17": edit(5, 17), "offset 64": edit(6, 64), "magnitude rule 2": edit(7, 2), "center 16": edit(8, 16),
        "table past the alphabet": edit(9, k - 1, (10, 1)),  # symbols 15 and 16
        "table span past the alphabet": edit(10, 255),
        "empty": b"",
    }
    # the first table's first weight set to 0: its span no longer starts on a present symbol
    cases["table starts on an absent symbol"] = edit(11, 0)
    # a stream that claims tables beyond its end
    cases["tables cut"] = good[:12]
    for what, stream in cases.items():
        with pytest.raises(FormatError):
            _decode(stream, 4, 1000)
            pytest.fail(f"{what}: accepted")
    state_at = len(good) - 4 - 2 * ((len(good) - 4 - _tables_end(good)) // 2)
    low = bytearray(good)
    low[state_at : state_at + 4] = (0xFFFF).to_bytes(4, "little")
    with pytest.raises(FormatError, match="below 2"):
        _decode(bytes(low), 4, 1000)


def _tables_end(stream: bytes) -> int:
    pos = 9
    for _ in range(stream[5]):
        pos += 2 + stream[pos + 1] + 1
    return pos


def test_profile_tables_shrink_small_streams(monkeypatch: pytest.MonkeyPatch):
    """A few hundred 7-bit codes, where a weight per symbol is a fifth of the stream: profile tables
    (model bit 7) make it at least 10% smaller, and decode exactly; a large stream keeps its weights."""
    rng = np.random.default_rng(11)
    codes = laplace_codes(300, 7, 6.0, rng)
    stream = round_trip(codes, 7)
    assert stream[3] == ans.ANS_PROFILE | 0
    monkeypatch.setattr(ans, "PROFILE_WORTH", np.inf)
    plain = round_trip(codes, 7)
    assert plain[3] == 0 and len(stream) < 0.9 * len(plain), (len(stream), len(plain))
    monkeypatch.undo()
    assert round_trip(laplace_codes(200_000, 7, 6.0, rng), 7)[3] == 0
    wide = laplace_codes(2_000, 10, 3.0, rng)  # codes past a byte take 16-bit profile fields
    monkeypatch.setattr(ans, "PROFILE_WORTH", 0.0)
    assert round_trip(wide, 10)[3] == ans.ANS_PROFILE
    ctx = round_trip(laplace_codes(3_000, 6, 3.0, rng), 6, CONTEXT)
    assert ctx[3] == ans.ANS_PROFILE | 1


def test_profile_weights_follow_the_specification():
    """FORMAT.md's worked example: knots at distances 1, 2 (left) and 1, 2, 3, 4, 6, 7 (right)."""
    knots = np.array([255, 247, 230, 250, 240, 226, 210, 181, 160], dtype=np.uint8)
    w = ans.profile_weights(16, 1, 10, 2, knots)[0]
    assert w.tolist() == [0, 230, 247, 255, 250, 240, 226, 210, 196, 181, 160, 0, 0, 0, 0, 0]
    assert ans.profile_bytes(16, 10, 2) == 3 + knots.size
    assert ans.knot_distances(7).tolist() == [0, 1, 2, 3, 4, 6, 7] and ans.knot_distances(0).tolist() == [0]


def test_weight_values_and_knot_distances_are_formats_tables():
    """spec's tables, as FORMAT.md prints them (MANT; 1, 2, 3, then 2^e and 3 * 2^(e-1))."""
    assert spec.ANS_MANTISSA == (1024, 1069, 1117, 1166, 1218, 1272, 1328, 1387, 1448, 1512, 1579, 1649, 1722, 1798, 1878, 1961)
    assert spec.ANS_KNOTS[:10] == (1, 2, 3, 4, 6, 8, 12, 16, 24, 32) and spec.ANS_KNOTS[-1] >= 1 << spec.MAX_BITS  # any side
    assert ans.MANTISSA.tolist() == list(spec.ANS_MANTISSA)


def test_hostile_profile_tables():
    codes = laplace_codes(300, 7, 6.0, np.random.default_rng(12))
    good = ans.encode_codes(codes, 7)
    assert good[3] == ans.ANS_PROFILE
    first, span, peak = good[4], good[5] + 1, good[6]
    knots = ans.knot_distances(peak).size + ans.knot_distances(span - 1 - peak).size - 1

    def edit(pos: int, value: int) -> bytes:
        b = bytearray(good)
        b[pos] = value
        return bytes(b)

    cases = {"a knot of weight 0": edit(7 + knots // 2, 0), "peak past the span": edit(6, span),
             "span past the alphabet": edit(5, 255 - first + 1), "cut in the knots": good[: 7 + knots - 1],
             "cut in the head": good[:6], "unknown model bits": edit(3, ans.ANS_PROFILE | 2)}
    for what, stream in cases.items():
        with pytest.raises(FormatError):
            _decode(stream, 7, codes.size)
            pytest.fail(f"{what}: accepted")


def test_hostile_count_is_bounded_by_the_caller():
    """The caller's count bounds work and memory, whatever the stream: a 15-byte stream of one
    symbol (which costs no bits, so fits any count) asked for 50M codes gives their packed size and
    allocates little more; a real stream asked for more codes than it holds runs out of words."""
    stream = ans.encode_codes(np.zeros(10, np.uint8), 1)
    tracemalloc.start()
    with deadline(60):
        out = ans.decode_codes(memoryview(stream), 1, 50_000_000)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert len(out) == 50_000_000 // 8 and not any(out[:4096])
    assert peak < 50_000_000 // 8 + (4 << 20)
    real = ans.encode_codes(laplace_codes(1000, 4, 1.5), 4)
    with deadline(60), pytest.raises(FormatError, match="runs out of words|does not end"):
        ans.decode_codes(memoryview(real), 4, 50_000_000)


def test_context_model_beats_order0_on_real_weights(sample: Path, silero_lstm: Path):
    for path, scheme, bits in ((sample, "sym", 4), (silero_lstm, "sym", 4), (silero_lstm, "asym", 6)):
        model = open_model(path)
        h0 = hc = 0.0
        for w in model.weights:
            d = Policy(scheme, bits, per_channel=True).decide(w)
            if not d.quantize:
                continue
            from qpack.converter.quant import get_quantizer

            codes, _ = get_quantizer(scheme).quantize(np.asarray(w.array, np.float32), bits, d.grouping)
            h0 += entropy_bits(np.bincount(codes.reshape(-1), minlength=1 << bits)) * codes.size
            hc += context_entropy_bits(codes, bits) * codes.size
        model.close()
        assert hc < h0 * 0.99, (path.name, hc / h0)


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_coarser_tables_cost_at_most_a_thousandth(silero_lstm: Path, bits: int, monkeypatch: pytest.MonkeyPatch):
    """The encoder's table precision: below 15 bits where that costs at most 0.1% more, and the stream
    then decodes to the same codes."""
    model = open_model(silero_lstm)
    w = max((w for w in model.weights if Policy("sym", bits).decide(w).quantize), key=lambda w: w.size)
    codes, _ = get_quantizer("sym").quantize(np.asarray(w.array, np.float32), bits, Grouping(w.axis))
    model.close()
    codes = codes.reshape(-1)
    chosen = ans.encode_codes(codes, bits)
    monkeypatch.setattr(ans, "PRECISIONS", ())
    finest = ans.encode_codes(codes, bits)
    assert finest[2] == 15 and chosen[2] < 15
    assert len(chosen) <= len(finest) * 1.001 + 8
    assert np.array_equal(ans.decode_raw(chosen, bits, codes.size), codes)


def _convert_both(model_path: Path, policy: Policy, tmp_path: Path) -> tuple[Path, Path]:
    packed, coded = tmp_path / "packed.qpk", tmp_path / "ans.qpk"
    convert(open_model(model_path), policy, packed)
    convert(open_model(model_path), policy, coded, codec=ANS)
    return packed, coded


@pytest.mark.parametrize("fixture, policy", [("sample", Policy("sym", 4, per_channel=True)),
                                             ("sample", Policy("pow2", 3)), ("tfl_fp32", Policy("asym", 6, per_channel=True))])
def test_container_round_trip(fixture: str, policy: Policy, tmp_path: Path, request: pytest.FixtureRequest):
    packed, coded = _convert_both(request.getfixturevalue(fixture), policy, tmp_path)
    with QpkReader(packed) as p, QpkReader(coded) as c:
        c.verify()
        assert any(c.blobs[e.codes].codec == ANS.id for e in c.entries)
        for ep, ec in zip(p.entries, c.entries):
            assert np.array_equal(p.codes(ep), c.codes(ec))
            assert c.blobs[ec.codes].codec in (RAW.id, ANS.id)
            assert c.blobs[ec.codes].length <= p.blobs[ep.codes].length
        assert c.size < p.size
    again = tmp_path / "again.qpk"
    convert(open_model(request.getfixturevalue(fixture)), policy, again, codec=ANS)
    assert again.read_bytes() == coded.read_bytes()


def test_cli_codec_and_figures(sample: Path, tmp_path: Path):
    out = tmp_path / "d.qpk"
    r = CliRunner().invoke(app, ["convert", str(sample), "-o", str(out), "--bits", "4", "--scheme", "sym", "--per-channel",
                                 "--codec", "ans", "--rdo", "0.1", "--compress", "none", "--json", str(tmp_path / "r.json")])
    assert r.exit_code == 0, r.output
    assert "context-model bound" in r.output and "codes, as stored (ans)" in r.output
    import json

    rep = json.loads((tmp_path / "r.json").read_text())
    s = rep["sizes"]
    assert s["stored_code_bytes"] < s["packed_code_bytes"]
    assert s["context_limit_bytes"] < s["entropy_limit_bytes"]
    assert rep["options"]["codec"] == "ans" and rep["options"]["rdo"] == 0.1
    assert all("context_entropy" in t for t in rep["tensors"])
    r = CliRunner().invoke(app, ["report", str(out), "--source", str(sample), "--compress", "none"])
    assert r.exit_code == 0, r.output
    assert "context model" in r.output


def test_rdo_saves_bits_at_a_bounded_cost(sample: Path):
    model = OnnxModel(sample)
    x = next(np.asarray(w.array, np.float32) for w in model.weights if w.name == "11.weight")
    signal_energy = float(np.square(x, dtype=np.float64).sum())
    plain = tensor_cost(x, "sym", 4, None)
    for lam in (0.05, 0.1):
        rdo = tensor_cost(x, "sym", 4, None, rdo=lam)
        assert rdo.bytes < plain.bytes
        loss_db = 10 * np.log10(rdo.squared_error / plain.squared_error)
        assert 0 <= loss_db < 0.6, loss_db
        assert rdo == tensor_cost(x, "sym", 4, None, rdo=lam)  # deterministic
    assert 10 * np.log10(signal_energy / plain.squared_error) > 5


def test_rdo_needs_a_rate_aware_scheme():
    with pytest.raises(OptionError, match=r"--rdo needs a scheme that rounds rate-aware \(asym, sym, dq\), not pow2"):
        Policy("pow2", 4, rdo=0.1)
    with pytest.raises(OptionError, match="0..10"):
        Policy("sym", 4, rdo=-1)


def test_rdo_takes_the_cheapest_of_the_three_nearest_codes():
    """Rate-aware rounding against a brute-force reference: each weight's cost (squared distance in
    steps plus lambda x the code's rate) over the nearest code and its two neighbours, ties kept nearest."""
    from qpack.converter.quant import get_quantizer
    from qpack.converter.quant.rdo import encode, rates

    rng = np.random.default_rng(7)
    q = get_quantizer("sym")
    x = (rng.laplace(size=(64, 512)) * 0.1).astype(np.float32)
    params = {"scale": np.full((64, 1), 0.04, np.float32)}
    rate = rates(rng.integers(0, 1000, 1 << 5).astype(np.int64))
    for lam in (0.05, 0.3, 2.0):
        got = encode(q, x, 5, params, rate, lam).astype(np.int64)
        t = x.astype(np.float64) / 0.04 + 15
        near = np.clip(np.rint(t), 0, 30)
        cands = np.stack([near, np.clip(near - 1, 0, 30), np.clip(near + 1, 0, 30)])
        cost = np.square(t - cands) + lam * rate.astype(np.float64)[cands.astype(np.int64)]
        want = np.take_along_axis(cands, np.argmin(cost, axis=0)[None], 0)[0]
        assert np.mean(got == want) > 0.9999 and np.abs(got - want).max() <= 1
        assert (got != near).any()  # the rates do move codes


def test_loose_clips_widen_the_range_without_clipping():
    from qpack.converter.quant import get_quantizer
    from qpack.formats.qpk import Grouping

    rng = np.random.default_rng(3)
    x = rng.standard_t(3, size=(32, 64)).astype(np.float32)
    for scheme in ("sym", "asym"):
        q = get_quantizer(scheme)
        base, _ = q.quantize(x, 4, Grouping(0))
        for k, clip in enumerate(("loose1", "loose2", "loose3"), 1):
            codes, params = q.quantize(x, 4, Grouping(0), clip)
            y = q.dequantize(codes, params, 4, Grouping(0))
            scale = params["scale"].reshape(-1, 1)
            assert np.all(np.abs(x - y) <= scale * 0.5001)  # nothing clipped: every weight within half a step
            _, p0 = q.quantize(x, 4, Grouping(0))
            assert np.allclose(params["scale"], p0["scale"] * 2 ** (k / 4), rtol=1e-6)
            # fewer levels in use than the width has: what an entropy coder charges less for
            assert len(np.unique(codes)) < len(np.unique(base)) or k < 2
