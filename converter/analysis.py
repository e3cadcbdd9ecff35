"""Per-tensor range, distribution and bit-efficiency figures of stored codes (see docs/commands.md, "qpack report").

Definitions, for a tensor of n-bit codes c with dequantized values y and, when the source is at
hand, float values x:
- levels_used: distinct codes that occur, out of 2^n;
- entropy: order-0 Shannon entropy of c in bits;
- context_entropy: cross-entropy of c in bits per code under the best context model of the `ans`
  codec (its tables as stored, their own bytes not counted), a bound below order 0 for a coder that
  looks at the codes before each one;
- bit_levels: log2(levels_used), the bits the used levels need;
- sqnr_db: 10 log10(sum x^2 / sum (x - y)^2);
- range_coverage: the part of [min x, max x] that [min y, max y] spans, in [0, 1];
- bit_efficiency: entropy / n * range_coverage. entropy / n reaches 1 only when every level is used
  equally often, which is when the levels sit at the quantiles of the float distribution (their
  density follows it); range_coverage charges for float range the levels gave up to get there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from qpack.converter.convert import db
from qpack.converter.measure import code_histogram, context_entropy_bits, entropy_bits, noise_energy
from qpack.formats.errors import OptionError
from qpack.formats.model import SourceModel
from qpack.formats.qpk import SCHEMES, QpkReader, TensorEntry


def _quartiles(v: NDArray) -> list[float]:
    q = np.percentile(v.reshape(-1), [0, 25, 50, 75, 100])
    return [float(f"{x:.6g}") for x in q]


def tensor_figures(e: TensorEntry, codes: NDArray[np.uint8], y: NDArray[np.float32], x: NDArray | None,
                   params: dict[str, NDArray]) -> dict[str, Any]:
    """All per-tensor figures of one stored tensor (x: the float source, when known)."""
    hist = code_histogram(codes, e.bits)
    used = int((hist > 0).sum())
    h = entropy_bits(hist)
    ref = x if x is not None else y
    lo, hi = float(ref.min()), float(ref.max())
    ylo, yhi = float(y.min()), float(y.max())
    coverage = 1.0 if hi == lo else max(0.0, min(yhi, hi) - max(ylo, lo)) / (hi - lo)
    out: dict[str, Any] = {
        "name": e.name, "key": e.key, "shape": list(e.shape), "params": e.count, "dtype": e.dtype, "role": e.role,
        "scheme": e.scheme, "bits": e.bits, "axis": e.axis,
        "min": float(f"{lo:.6g}"), "max": float(f"{hi:.6g}"), "quartiles": _quartiles(ref),
        "levels_used": used, "levels": SCHEMES[e.scheme].levels(e.bits), "entropy": round(h, 4),
        "context_entropy": round(context_entropy_bits(codes, e.bits), 4),
        "bit_levels": round(float(np.log2(used)), 4) if used else 0.0,
        "range_coverage": round(coverage, 4),
        "bit_efficiency": round(h / e.bits * coverage, 4),
        "sqnr_db": None, "signal": None, "noise": None,
    }
    if x is not None:
        signal, noise = noise_energy(x, y)
        out.update(sqnr_db=db(signal, noise), signal=signal, noise=noise)
    figures = SCHEMES[e.scheme].figures
    if figures is not None:
        out.update(figures(codes, params, e.bits, e.grouping))
    return out


def analyze(qpk: Path, source: SourceModel | None = None) -> dict[str, Any]:
    """Figures of every tensor stored in `qpk`, measured against `source`'s floats when given."""
    floats = {w.key: w for w in source.weights} if source is not None else {}
    with QpkReader(qpk) as q:
        rows = []
        for e in q.entries:
            codes = q.codes(e)
            params = q.params(e)
            y = SCHEMES[e.scheme].dequantize(codes, params, e.bits, e.grouping)  # the codes are decoded once
            w = floats.get(e.key)
            if source is not None and (w is None or w.shape != e.shape):
                raise OptionError(f"--source {source.path.name} is not the model this container came from (tensor '{e.name}')")
            x = None if w is None else w.array
            row = tensor_figures(e, codes, y, None if x is None else np.asarray(x, np.float32), params)
            blobs = q.blobs
            row["stored_bytes"] = blobs[e.codes].length + sum(blobs[i].length for i in e.params.values())
            row["code_bytes"] = blobs[e.codes].length  # as stored: packed, or entropy-coded
            row["packed_bytes"] = blobs[e.codes].raw_length
            rows.append(row)
        return {"tensors": rows, "totals": totals(rows), "kept": q.kept, "format": q.format,
                "options": q.info["options"], "qpk_bytes": q.size, "graph_bytes": q.blobs[q.graph_index].length,
                "source_bytes": q.info["source"].get("bytes")}


def totals(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Parameter-weighted model figures; SQNR pools signal and noise energy over all tensors."""
    n = sum(r["params"] for r in rows)
    if not n:
        return {"params": 0}

    def avg(key: str) -> float:
        return round(sum(r[key] * r["params"] for r in rows) / n, 4)

    out = {"params": n, "bits": avg("bits"), "entropy": avg("entropy"),
           "context_entropy": avg("context_entropy") if all("context_entropy" in r for r in rows) else None,
           "code_bytes": sum(r.get("code_bytes", 0) for r in rows), "packed_bytes": sum(r.get("packed_bytes", 0) for r in rows),
           "bit_levels": avg("bit_levels"),
           "bit_efficiency": avg("bit_efficiency"), "range_coverage": avg("range_coverage"), "sqnr_db": None}
    if all(r["signal"] is not None for r in rows):
        out["sqnr_db"] = db(sum(r["signal"] for r in rows), sum(r["noise"] for r in rows))
        out["min_tensor_sqnr_db"] = min((r["sqnr_db"] for r in rows if r["sqnr_db"] is not None), default=None)
    return out
