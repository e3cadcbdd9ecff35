"""Human-readable tables of reports (rich); the JSON form is the source of truth."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table


def _n(v: Any) -> str:
    return f"{v:,}" if isinstance(v, int) else ("-" if v is None else str(v))


def size_table(report: dict[str, Any], console: Console, tensors: bool = False) -> None:
    """Print the size comparison: float baseline and .qpk, raw and through each compressor."""
    s = report["sizes"]
    comp = report["compressed"]
    t = Table(title=f"qpack size report: {report['source']['path']}", title_justify="left")
    t.add_column("artifact")
    t.add_column("bytes", justify="right")
    for c in comp:
        t.add_column(c, justify="right")
    t.add_row("original (float)", _n(s["original_bytes"]), *(_n(comp[c].get("original")) for c in comp))
    t.add_row("float32 weights", _n(s["float32_weight_bytes"]), *("" for _ in comp))
    t.add_row(".qpk", _n(s["qpk_bytes"]), *(_n(comp[c].get("qpk")) for c in comp))
    t.add_row("  packed codes", _n(s["packed_code_bytes"]), *("" for _ in comp))
    t.add_row("  scales/zero points", _n(s["param_bytes"]), *("" for _ in comp))
    t.add_row("  graph (zstd)", _n(s["graph_bytes"]), *("" for _ in comp))
    t.add_row("  entropy limit of codes", _n(s["entropy_limit_bytes"]), *("" for _ in comp))
    console.print(t)
    console.print(
        f"quantized {s['quantized_params']:,} params, kept {s['float_params_kept']:,} in float; "
        f"{_n(s['bits_per_weight'])} bits/weight with scales, code entropy {_n(s['entropy_bits_per_weight'])} bits; "
        f"{_n(s['ratio_vs_original'])}x smaller than the original"
    )
    if tensors:
        tensor_table(report, console)


def tensor_table(report: dict[str, Any], console: Console) -> None:
    t = Table(title="tensors", title_justify="left")
    for col in ("name", "shape", "role", "scheme", "bits", "axis", "packed", "entropy", "levels"):
        t.add_column(col, justify="left" if col in ("name", "role", "scheme") else "right")
    for r in report["tensors"]:
        t.add_row(r["name"], "x".join(map(str, r["shape"])), r["role"], r["scheme"], str(r["bits"]),
                  _n(r["axis"]), _n(r["packed_bytes"]), f"{r['entropy']:.3f}", f"{r['levels_used']}/{1 << r['bits']}")
    console.print(t)
    if report["kept"]:
        k = Table(title="kept in the graph", title_justify="left")
        for col in ("name", "shape", "dtype", "reason"):
            k.add_column(col)
        for r in report["kept"]:
            k.add_row(r["name"], "x".join(map(str, r["shape"])), r["dtype"], r["reason"])
        console.print(k)


def report_table(rep: dict[str, Any], console: Console) -> None:
    """Per-tensor range, distribution and efficiency table, then the model totals."""
    t = Table(title=f"qpack report: {rep['source']}", title_justify="left")
    cols = ("name", "params", "scheme", "bits", "min", "max", "median", "levels", "entropy", "sqnr dB", "coverage", "efficiency", "window")
    for c in cols:
        t.add_column(c, justify="left" if c in ("name", "scheme") else "right")
    for r in rep["tensors"]:
        window = r.get("exponent_window")
        t.add_row(r["name"], _n(r["params"]), r["scheme"], str(r["bits"]), f"{r['min']:.4g}", f"{r['max']:.4g}",
                  f"{r['quartiles'][2]:.4g}", f"{r['levels_used']}/{r['levels']}", f"{r['entropy']:.3f}",
                  "-" if r["sqnr_db"] is None else f"{r['sqnr_db']:.2f}", f"{r['range_coverage']:.3f}",
                  f"{r['bit_efficiency']:.3f}", "-" if not window else f"2^{window[0]}..2^{window[1]}")
    console.print(t)
    tot, s = rep["totals"], rep["sizes"]
    console.print(
        f"{_n(tot.get('params'))} quantized params; {_n(s.get('qpk_bytes'))} bytes .qpk; {_n(s.get('bits_per_weight'))} bits/weight "
        f"with scales; entropy {_n(tot.get('entropy'))} bits; average bit-levels {_n(tot.get('bit_levels'))}; "
        f"bit efficiency {_n(tot.get('bit_efficiency'))}; weight SQNR {_n(tot.get('sqnr_db'))} dB"
    )
