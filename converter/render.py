"""Human-readable tables of reports (rich); the JSON form is the source of truth."""

from __future__ import annotations

from collections import Counter
from typing import Any

from rich.console import Console
from rich.table import Table

from qpack.formats.qpk.codecs import RAW, label_of


def _n(v: Any) -> str:
    return f"{v:,}" if isinstance(v, int) else ("-" if v is None else str(v))


def _g(v: float | None) -> str:
    return "-" if v is None else f"{v:.4g}"


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


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
    codec = label_of((report.get("options") or {}).get("codec", RAW.name))
    t.add_row("  codes, packed", _n(s["packed_code_bytes"]), *("" for _ in comp))
    t.add_row(f"  codes, as stored ({codec})", _n(s["stored_code_bytes"]), *("" for _ in comp))
    t.add_row("    order-0 entropy bound", _n(s["entropy_limit_bytes"]), *("" for _ in comp))
    if "context_limit_bytes" in s:
        t.add_row("    context-model bound", _n(s["context_limit_bytes"]), *("" for _ in comp))
    t.add_row("  scales/zero points", _n(s["param_bytes"]), *("" for _ in comp))
    t.add_row("  graph (zstd)", _n(s["graph_bytes"]), *("" for _ in comp))
    console.print(t)
    console.print(
        f"quantized {s['quantized_params']:,} params ({_pct(s.get('quantized_share'))} of the float ones), "
        f"kept {s['float_params_kept']:,} in float; "
        f"{_n(s['bits_per_weight'])} bits/weight with scales, code entropy {_n(s['entropy_bits_per_weight'])} bits (order 0)"
        + (f", {_n(s['context_entropy_bits_per_weight'])} (context model)" if "context_entropy_bits_per_weight" in s else "")
        + f"; weight SQNR {_n(s.get('sqnr_db'))} dB; "
        f"{_n(s['ratio_vs_original'])}x smaller than the original"
    )
    if report.get("allocation"):
        console.print(allocation_line(report["allocation"], report["tensors"]))
    if report.get("exports"):
        console.print(exports_line(report["exports"], report.get("options", {}).get("for")))
    print_notes(report, console)
    if tensors:
        tensor_table(report, console)


def print_notes(report: dict[str, Any], console: Console) -> None:
    """A report's remarks (converter.sizes.notes), one `note:` line each."""
    for note in report.get("notes") or ():
        console.print(f"note: {note}")


def exports_line(exports: dict[str, dict[str, Any]], made_for: str | None = None) -> str:
    """Where a file can go: each export target, whether it stores every tensor as the container does,
    and its bytes (measured for the target the file was made for, else estimated)."""
    def one(target: str, v: dict[str, Any]) -> str:
        n = v["widened"]
        how = "as stored" if n == 0 else f"widening {n} tensor{'s' if n > 1 else ''}"
        size = f"{v['bytes']:,} bytes" if v.get("measured") else f"about {v['bytes']:,} bytes"
        return f"{target}{' (made for)' if target == made_for else ''} {how}, {size}"

    return "exports: " + "; ".join(one(t, v) for t, v in exports.items())


def allocation_line(a: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    """What a goal chose, in one line: the goal, how it weighed tensors, and the widths and schemes it gave them."""
    widths = sorted({r["bits"] for r in rows})
    schemes = Counter(r["scheme"] for r in rows)
    span = f"{widths[0]}-{widths[-1]}" if len(widths) > 1 else f"{widths[0]}" if widths else "-"
    line = (f"allocation: {a.get('goal', '?')} ({a.get('objective', 'layers')} objective); widths {span} bits; "
            + ", ".join(f"{n} {k}" for k, n in sorted(schemes.items())) + " tensors")
    if a.get("kept_in_float"):
        line += f", {len(a['kept_in_float'])} kept in float"
    return line + (f"; met: {a['met']}" if a.get("met") else "")


def tensor_table(report: dict[str, Any], console: Console) -> None:
    t = Table(title="tensors", title_justify="left")
    for col in ("name", "shape", "role", "scheme", "bits", "axis", "packed", "stored", "entropy", "ctx entropy", "levels"):
        t.add_column(col, justify="left" if col in ("name", "role", "scheme") else "right")
    for r in report["tensors"]:
        t.add_row(r["name"], "x".join(map(str, r["shape"])), r["role"], r["scheme"], str(r["bits"]),
                  _n(r["axis"]), _n(r["packed_bytes"]), _n(r["stored_bytes"]), f"{r['entropy']:.3f}",
                  _n(r.get("context_entropy")), f"{r['levels_used']}/{1 << r['bits']}")
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
    cols = ("name", "params", "scheme", "bits", "min", "max", "median", "levels", "entropy", "ctx entropy", "code bytes", "sqnr dB",
            "coverage", "efficiency", "window")
    for c in cols:
        t.add_column(c, justify="left" if c in ("name", "scheme") else "right")
    for r in rep["tensors"]:
        window = r.get("exponent_window")
        t.add_row(r["name"], _n(r["params"]), r["scheme"], str(r["bits"]), f"{r['min']:.4g}", f"{r['max']:.4g}",
                  f"{r['quartiles'][2]:.4g}", f"{r['levels_used']}/{r['levels']}", f"{r['entropy']:.3f}",
                  f"{r['context_entropy']:.3f}", f"{r['code_bytes']:,}", "-" if r["sqnr_db"] is None else f"{r['sqnr_db']:.2f}",
                  f"{r['range_coverage']:.3f}",
                  f"{r['bit_efficiency']:.3f}", "-" if not window else f"2^{window[0]}..2^{window[1]}")
    console.print(t)
    tot, s = rep["totals"], rep["sizes"]
    share = s.get("quantized_share")
    console.print(
        f"{_n(tot.get('params'))} quantized params{f' ({_pct(share)} of the float ones)' if share is not None else ''}; "
        f"{_n(s.get('qpk_bytes'))} bytes .qpk; {_n(s.get('bits_per_weight'))} bits/weight "
        f"with scales; entropy {_n(tot.get('entropy'))} bits (order 0), {_n(tot.get('context_entropy'))} (context model); "
        f"codes stored in {_n(tot.get('code_bytes'))} bytes ({_n(tot.get('packed_bytes'))} packed); "
        f"average bit-levels {_n(tot.get('bit_levels'))}; "
        f"bit efficiency {_n(tot.get('bit_efficiency'))}; weight SQNR {_n(tot.get('sqnr_db'))} dB"
    )
    f = rep.get("fidelity")
    if f and "skipped" in f:
        console.print(f"outputs not compared: {f['skipped']}")
    elif f:
        least = min(f["outputs"], key=lambda o: o["cosine"])
        console.print(f"outputs of the source and the restored container on {f['inputs']}: least cosine {least['cosine']:.6f} "
                      f"({least['output']}); a smoke check, qpack eval measures on real inputs")
    print_notes(rep, console)


def eval_table(result: dict[str, Any], console: Console) -> None:
    """Per-output fidelity (with the errors of regression outputs), then accuracy, confusion growth
    and grouping for classifiers."""
    t = Table(title=f"qpack eval: {result['model']} on {result['inputs']}", title_justify="left")
    per_input = any("worst_input_cosine" in o for o in result["outputs"])
    reg = {o["output"]: o for o in result.get("regression") or []}
    cols = ("output", "judged as", "cosine", *(("worst input",) if per_input else ()), "SQNR dB", "max abs error",
            *(("mean abs error", "relative RMS error") if reg else ()))
    for c in cols:
        t.add_column(c, justify="left" if c in ("output", "judged as") else "right")
    for o in result["outputs"]:
        worst = (f"{o['worst_input_cosine']:.6f}" if "worst_input_cosine" in o else "-",) if per_input else ()
        r = reg.get(o["output"])
        kind = "regression" if r else "class scores"
        errors = () if not reg else ("", "") if r is None else (
            _g(r["mean_abs_error"]), "-" if r["relative_rms_error"] is None else f"{100 * r['relative_rms_error']:.3g}%")
        t.add_row(o["output"], kind, f"{o['cosine']:.6f}", *worst, _n(o["sqnr_db"]), f"{o['max_abs_error']:.4g}", *errors)
    console.print(t)
    cls: dict[str, Any] | None = result.get("classification")
    if cls:
        console.print(f"top-1 agreement {100 * cls['top1_agreement']:.2f}% over {result['samples']} samples")
        if "accuracy_original" in cls:
            console.print(f"accuracy {100 * cls['accuracy_original']:.2f}% -> {100 * cls['accuracy_quantized']:.2f}% "
                          f"({cls['accuracy_delta_points']:+.2f} points)")
            for p in cls["confusion_growth"][:5]:
                console.print(f"  class {p['true']} taken for {p['predicted']}: {p['original']} -> {p['quantized']}")
            if cls["groups"]:
                console.print(f"groups ({cls['group_source']}): {cls['groups']}; grouped accuracy "
                              f"{100 * cls['grouped_accuracy_original']:.2f}% -> {100 * cls['grouped_accuracy_quantized']:.2f}%")
    console.print(f"reproduce: {result['command']}")


def sweep_table(result: dict[str, Any], console: Console) -> None:
    """Accuracy or loss and size of every cell, the knees and the most sensitive tensors."""
    t = Table(title=f"qpack sweep: {result['model']} (loss in {result['loss_measure']})", title_justify="left")
    for c in ("scheme", "granularity", "bits", "accuracy %", "loss", "min cosine", ".qpk bytes", "bits/weight"):
        t.add_column(c, justify="left" if c in ("scheme", "granularity") else "right")
    for c in result["cells"]:
        t.add_row(c["scheme"], c["granularity"], str(c["bits"]), "-" if c["accuracy"] is None else f"{100 * c['accuracy']:.2f}",
                  f"{c['loss_points']:.2f}", f"{c['min_cosine']:.5f}", f"{c['qpk_bytes']:,}", _n(c["bits_per_weight"]))
    console.print(t)
    if result.get("float_accuracy") is not None:
        console.print(f"float accuracy {100 * result['float_accuracy']:.2f}%")
    knees = ", ".join(f"{k}: {'none' if v is None else f'{v} bits'}" for k, v in result["knee_bits"].items())
    console.print(f"knee (lowest width within {result['tolerance_points']} points): {knees}")
    sens = result["sensitivity"]
    if sens["ranking"]:
        top = ", ".join(f"{r['name']} ({r['loss_points']:+.2f})" for r in sens["ranking"][:5])
        console.print(f"most sensitive at {sens['bits']} bits, one tensor at a time: {top}")
    console.print(f"reproduce: {result['command']}")
