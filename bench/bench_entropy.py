"""The ans codec on real weights: sizes against zstd and the two entropy bounds, and decode speed.

    python bench/bench_entropy.py [--model PATH] [--speed]

For each setting, the model's default-quantized tensors are quantized and their codes measured:
packed bytes, zstd level 3 of the packed stream where smaller (what --codec zstd stores), the
order-0 entropy, the cross-entropy under the best context model, and the ans stream.
--speed decodes the largest tensor's codes (2, 4, 8 bits per channel; 12 bits per tensor), repeated
to about 8M, and reports codes per second in
CPU time (the machine may be shared), best of 5, packing into the output included.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import sys
import time
from pathlib import Path

import numpy as np
import zstandard

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from qpack.converter.measure import entropy_bits  # noqa: E402
from qpack.converter.policy import Policy  # noqa: E402
from qpack.converter.quant import get_quantizer  # noqa: E402
from qpack.formats.qpk import Grouping, ans, pack  # noqa: E402
from qpack.formats.qpk.spec import CODES_ZSTD_LEVEL  # noqa: E402
from qpack.formats.registry import open_model  # noqa: E402

SETTINGS = (("sym", 4, True), ("sym", 4, False), ("sym", 8, True), ("sym", 12, False), ("asym", 4, True), ("pow2", 4, True))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default = md.distribution("rapidocr-onnxruntime").locate_file("rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx")
    ap.add_argument("--model", type=Path, default=Path(str(default)))
    ap.add_argument("--speed", action="store_true")
    args = ap.parse_args()
    model = open_model(args.model)
    tensors = [(np.asarray(w.array, np.float32), w.axis if len(w.shape) > 1 else None)
               for w in model.weights if Policy("sym", 8).decide(w).quantize]
    print(f"{args.model.name}: {len(tensors)} tensors, {sum(a.size for a, _ in tensors):,} weights")
    print("| codes | packed | zstd | order-0 entropy | context-model cross-entropy | ans stored |")
    print("|---|---|---|---|---|---|")
    zc = zstandard.ZstdCompressor(level=CODES_ZSTD_LEVEL, write_checksum=False)
    for scheme, bits, per_channel in SETTINGS:
        q = get_quantizer(scheme)
        packed = zs = h0 = hc = stored = 0.0
        for a, axis in tensors:
            codes = q.quantize(a, bits, Grouping(axis if per_channel else None))[0].reshape(-1)
            p = pack(codes, bits)
            packed += p.nbytes
            zs += min(len(zc.compress(p.tobytes())), p.nbytes)  # zstd is kept only where smaller
            h0 += entropy_bits(np.bincount(codes, minlength=1 << bits)) * codes.size / 8
            order0, best = ans.choose(codes, bits)
            hc += (best or order0).data_bits / 8
            coded = ans.encode_codes(codes, bits)
            stored += p.nbytes if coded is None else min(len(coded), p.nbytes)  # the writer keeps the smaller
        print(f"| {scheme} {bits}-bit per {'channel' if per_channel else 'tensor'} | {packed:,.0f} | {zs:,.0f} | {h0:,.0f} | "
              f"{hc:,.0f} | {stored:,.0f} |")
    if args.speed:
        a, axis = max(tensors, key=lambda t: t[0].size)
        for bits in (2, 4, 8, 12):
            codes = get_quantizer("sym").quantize(a, bits, Grouping(axis if bits <= 8 else None))[0].reshape(-1)
            codes = np.tile(codes, max(1, (8 << 20) // codes.size))
            for label, model_ in (("context", None), ("order 0", ans.Model()))[bits > 8:]:  # wide codes: order 0
                stream = ans.encode_codes(codes, bits, model_)
                assert stream is not None
                best_t = float("inf")
                for _ in range(5):
                    t = time.process_time()
                    ans.decode_codes(stream, bits, codes.size)
                    best_t = min(best_t, time.process_time() - t)
                print(f"decode {bits}-bit {label:8s} {codes.size:,} codes: {codes.size / best_t / 1e6:.0f} M codes/s (CPU time)")


if __name__ == "__main__":
    main()
