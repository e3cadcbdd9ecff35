"""One self-contained HTML page of a report: a summary in words, the details, pictures (embedded as
data URIs) and the tensor table, laid out to fit any window (no script, no outside resource)."""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from qpack.formats.qpk.codecs import RAW, label_of

# The page fits its window: only the wide tables scroll, each inside its own box, under a sticky header.
_STYLE = """*{box-sizing:border-box}
body{font-family:system-ui,sans-serif;margin:0 auto;padding:1.5em;max-width:1400px;color:#222;line-height:1.45}
h1{font-size:1.6em;margin:0;overflow-wrap:anywhere}h2{font-size:1.2em;margin:1.6em 0 .5em}
.file,code{overflow-wrap:anywhere}.file{color:#555;margin:.2em 0 1em}code{background:#f6f6f6;padding:0 .2em}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(13em,1fr));gap:.7em;margin:1em 0}
.card{border:1px solid #ddd;border-radius:6px;padding:.6em .8em;background:#fafafa}
.card .label{color:#555;font-size:.85em}.card .value{font-size:1.35em;font-weight:600}.card .more{color:#666;font-size:.8em}
.note{background:#fff8e1;border-left:4px solid #f0b400;padding:.5em .8em}.muted{color:#666;font-size:.9em}
.box{display:inline-block;vertical-align:top;overflow:auto;max-width:100%;max-height:75vh;border:1px solid #ddd;margin:.5em 0}
table{border-collapse:separate;border-spacing:0;font-size:13px}
td,th{border-bottom:1px solid #e3e3e3;border-right:1px solid #eee;padding:3px 7px;text-align:right;vertical-align:top}
td{white-space:nowrap}
th{position:sticky;top:0;z-index:1;background:#f0f0f0;font-weight:600;text-align:center}
td.text,th.text{text-align:left}td.name{white-space:normal;min-width:12em;max-width:24em;overflow-wrap:anywhere}
.details td{white-space:normal;overflow-wrap:anywhere}.details td:first-child{text-align:left;color:#444}
.details{border:1px solid #ddd;max-width:100%}.card{overflow-wrap:anywhere}
img{display:block;max-width:100%;height:auto;border:1px solid #eee;margin:.5em 0}"""

_E = html.escape


def _num(v: Any, digits: int = 4) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return f"{v:,.{digits}g}" if abs(v) < 1e6 else f"{v:,.0f}"
    return str(v)


def _bytes(n: int | None) -> str:
    """A byte count, exactly and in the nearest binary unit."""
    if n is None:
        return "-"
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            return f"{n:,} bytes ({n / (1 << shift):.1f} {unit})"
    return f"{n:,} bytes"


def _exact(n: int) -> tuple[str, str]:
    """A byte count for a card: exactly, and in the nearest binary unit underneath."""
    exact, _, unit = _bytes(n).partition(" (")
    return exact, unit.rstrip(")")


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def _db(v: float | None) -> str:
    return "- (no error)" if v is None else f"{v:.2f} dB"


# label and rendering of each figure of `totals` and `sizes`, in the order the details table shows them
_FIGURES: tuple[tuple[str, str, Callable[[Any], str]], ...] = (
    ("original_bytes", "Original model file", _bytes),
    ("qpk_bytes", ".qpk container", _bytes),
    ("ratio_vs_original", "Compression ratio (original / .qpk)", lambda v: f"{v:.2f}x"),
    ("float32_weight_bytes", "Every float weight as float32", _bytes),
    ("packed_code_bytes", "Codes, packed n-bit", _bytes),
    ("stored_code_bytes", "Codes, as stored", _bytes),
    ("stored_code_and_param_bytes", "Codes and parameters, as stored", _bytes),
    ("param_bytes", "Scales, zero points, codebooks", _bytes),
    ("graph_bytes", "Graph (zstd)", _bytes),
    ("entropy_limit_bytes", "Codes at their order-0 entropy", _bytes),
    ("context_limit_bytes", "Codes at the context model's cross-entropy", _bytes),
    ("params", "Quantized weights", _num),
    ("float_params_kept", "Float weights kept in float", _num),
    ("quantized_share", "Share of the float weights quantized", _pct),
    ("bits_per_weight", "Stored bits per weight (codes and parameters)", lambda v: f"{v:.3f} bits"),
    ("bits", "Code width, average over weights", lambda v: f"{v:.3g} bits"),
    ("entropy", "Code entropy, order 0", lambda v: f"{v:.3f} bits per weight"),
    ("context_entropy", "Code entropy under the ans context model", lambda v: f"{v:.3f} bits per weight"),
    ("bit_levels", "Bits the levels used need (log2 of their count)", lambda v: f"{v:.3f} bits"),
    ("range_coverage", "Float range the levels span", _pct),
    ("bit_efficiency", "Bit efficiency (entropy / width x range coverage)", lambda v: f"{v:.3f}"),
    ("sqnr_db", "Weight SQNR, pooled over the quantized tensors", _db),
    ("min_tensor_sqnr_db", "Weight SQNR of the worst tensor", _db),
)

# the tensor table: JSON key, column heading, rendering
_COLUMNS: tuple[tuple[str, str, Callable[[dict[str, Any]], str]], ...] = (
    ("name", "Tensor", lambda r: str(r["name"])),
    ("shape", "Shape", lambda r: "x".join(map(str, r["shape"]))),
    ("params", "Weights", lambda r: _num(r["params"])),
    ("dtype", "Source dtype", lambda r: str(r["dtype"])),
    ("scheme", "Scheme", lambda r: str(r["scheme"])),
    ("bits", "Bits", lambda r: str(r["bits"])),
    ("stored_bytes", "Stored bytes", lambda r: _num(r.get("stored_bytes"))),
    ("min", "Min", lambda r: _num(r["min"])),
    ("max", "Max", lambda r: _num(r["max"])),
    ("quartiles", "Quartiles 25 / 50 / 75%", lambda r: " / ".join(_num(x, 3) for x in r["quartiles"][1:4])),
    ("levels_used", "Levels used", lambda r: f"{r['levels_used']:,} of {r['levels']:,}"),
    ("entropy", "Entropy (bits)", lambda r: f"{r['entropy']:.3f}"),
    ("bit_levels", "Bit-levels", lambda r: f"{r['bit_levels']:.2f}"),
    ("sqnr_db", "SQNR (dB)", lambda r: "-" if r["sqnr_db"] is None else f"{r['sqnr_db']:.2f}"),
    ("range_coverage", "Range covered", lambda r: _pct(r["range_coverage"])),
    ("bit_efficiency", "Bit efficiency", lambda r: f"{r['bit_efficiency']:.3f}"),
    ("exponent_window", "Exponents (pow2)", lambda r: "-" if not r.get("exponent_window") else
     "2^{} .. 2^{}".format(*r["exponent_window"])),
)
_TEXT = {"name", "dtype", "scheme"}


def _card(label: str, value: str, more: str = "") -> str:
    return (f'<div class="card"><div class="label">{_E(label)}</div><div class="value">{_E(value)}</div>'
            + (f'<div class="more">{_E(more)}</div>' if more else "") + "</div>")


def _fidelity_card(f: dict[str, Any] | None) -> str:
    if not f:
        return _card("Output fidelity", "not measured", "a .qpk alone: give --source MODEL")
    if "skipped" in f:
        return _card("Output fidelity", "not measured", "see below")
    least = min(f["outputs"], key=lambda o: o["cosine"])
    more = f"least output cosine ({least['output']}), on {f['samples']} random inputs"
    return _card("Output fidelity", f"{least['cosine']:.4f}", more)


def _summary(rep: dict[str, Any]) -> str:
    s, t = rep.get("sizes", {}), rep["totals"]
    original, qpk = s.get("original_bytes"), s.get("qpk_bytes", rep.get("qpk_bytes"))
    recorded = "source_model" in rep and rep["source_model"] is None  # a .qpk alone: its source's size as it recorded it
    cards = [_card("Original model", _exact(original)[0], _exact(original)[1] + (", as the container records it" if recorded else ""))
             if original else _card("Original model", "unknown", "not recorded in the container"),
             _card("Packed (.qpk)", *_exact(qpk))]
    ratio = s.get("ratio_vs_original")
    cards.append(_card("Compression", "-" if not ratio else f"{ratio:.2f}x smaller", "original / .qpk, bytes on disk"))
    bpw = s.get("bits_per_weight")
    cards.append(_card("Bits per weight", "-" if bpw is None else f"{bpw:.3f}",
                       "nothing quantized" if bpw is None else f"codes {_num(t.get('bits'), 3)} bits wide, with their scales, as stored"))
    if not rep["tensors"]:
        cards.append(_card("Weight SQNR", "-", "nothing quantized"))
    elif all(r.get("signal") is not None for r in rep["tensors"]):  # the float weights are known
        worst = t.get("min_tensor_sqnr_db")
        cards.append(_card("Weight SQNR", _db(t.get("sqnr_db")), "" if worst is None else f"worst tensor {_db(worst)}"))
    else:
        cards.append(_card("Weight SQNR", "unknown", "a .qpk alone: give --source MODEL"))
    share = s.get("quantized_share")
    cards.append(_card("Quantized", f"{_num(t.get('params', 0))} weights",
                       f"{_pct(share)} of the float weights" if share is not None else ""))
    cards.append(_fidelity_card(rep.get("fidelity")))
    return '<div class="cards">' + "".join(cards) + "</div>"


def _options(rep: dict[str, Any]) -> str:
    o = rep.get("options") or {}
    if not o:
        return ""
    words = [f"{o.get('scheme', '?')}, {o.get('bits', '?')} bits", "per channel" if o.get("per_channel") else "per tensor"]
    if o.get("group_size"):
        words.append(f"blocks of {o['group_size']}")
    words += [f"clip {o.get('clip', 'minmax')}", "codec " + label_of(str(o.get("codec", RAW.name)))]
    return f'<p class="muted">Options: {_E(", ".join(words))}</p>'


def _fidelity(f: dict[str, Any] | None) -> str:
    if not f:
        return ""
    head = "<h2>Output fidelity</h2>"
    if "skipped" in f:
        return head + f"<p>Not measured: {_E(f['skipped'])}.</p>"
    reg = {r["output"]: r for r in f.get("regression") or []}
    cols = ["Output", "Judged as", "Cosine", "Worst input cosine", "SQNR (dB)", "Max abs error",
            *(["Mean abs error", "Relative RMS error"] if reg else [])]
    rows = []
    for o in f["outputs"]:
        r = reg.get(o["output"])
        cells = [o["output"], "regression" if r else "class scores", f"{o['cosine']:.6f}", _num(o.get("worst_input_cosine"), 6),
                 _num(o["sqnr_db"]), _num(o["max_abs_error"])]
        if reg:
            cells += ["", ""] if r is None else [_num(r["mean_abs_error"]), _pct(r["relative_rms_error"])]
        rows.append(cells)
    cls = f.get("classification")
    after = f"<p>Top-1 agreement {100 * cls['top1_agreement']:.2f}%.</p>" if cls else ""
    return (head + f"<p>The source model and the model restored from the container, run on {_E(f['inputs'])}. "
            "Random inputs exercise every weight but are not the data the model was made for: a smoke check, not a "
            "measure of accuracy. <code>qpack eval</code> compares them on real inputs.</p>"
            + _table(cols, rows, {0, 1}, name=0) + after)


def _wrap(name: str) -> str:
    """A tensor name, escaped, that may break after its separators (`conv1_expand/weights`)."""
    return re.sub(r"([_/.:])", r"\1<wbr>", _E(name))


def _table(cols: list[str], rows: list[list[str]], text: set[int], name: int | None = None) -> str:
    """A table in its own scrolling box; `text` columns left-aligned, `name` the one whose long words wrap."""
    def cls(i: int) -> str:
        c = ("text " if i in text else "") + ("name" if i == name else "")
        return f' class="{c.strip()}"' if c.strip() else ""

    head = "".join(f"<th{cls(i)}>{_E(c)}</th>" for i, c in enumerate(cols))
    body = "".join("<tr>" + "".join(f"<td{cls(i)}>{_wrap(v) if i == name else _E(v)}</td>" for i, v in enumerate(r)) + "</tr>"
                   for r in rows)
    return f'<div class="box"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def _details(rep: dict[str, Any]) -> str:
    values = {**rep["totals"], **rep.get("sizes", {})}
    rows, seen = [], set()
    for key, label, show in _FIGURES:
        v = values.get(key)
        if v is None or label in seen:
            continue
        seen.add(label)
        rows.append(f'<tr title="{_E(key)}"><td>{_E(label)}</td><td>{_E(show(v))}</td></tr>')
    for name, sizes in (rep.get("compressed") or {}).items():
        parts = [f"{'.qpk' if k == 'qpk' else k} {_bytes(v)}" for k, v in sizes.items() if v is not None]
        rows.append(f"<tr><td>Compressed with {_E(name)}</td><td>{_E('; '.join(parts))}</td></tr>")
    return f'<h2>Details</h2><table class="details">{"".join(rows)}</table>'


def _kept(rep: dict[str, Any]) -> str:
    kept = [k for k in rep.get("kept") or [] if isinstance(k, dict)]
    if not kept:
        return ""
    rows = [[str(k.get("name", "")), " x ".join(map(str, k.get("shape") or [])) if isinstance(k.get("shape"), list) else "",
             str(k.get("dtype", "")), str(k.get("reason", ""))] for k in kept]
    return (f"<details><summary>{len(kept):,} tensors left in the graph as they are</summary>"
            + _table(["Tensor", "Shape", "Dtype", "Why"], rows, {0, 2, 3}, name=0) + "</details>")


def page(report: dict[str, Any], images: dict[str, bytes], command: str) -> str:
    """The HTML page for a report dict and its PNG images."""
    notes = "".join(f'<p class="note">{_E(n)}</p>' for n in report.get("notes") or [])
    columns = [c for c in _COLUMNS if c[0] != "exponent_window" or any(r.get("exponent_window") for r in report["tensors"])]
    tensors = _table([c for _, c, _ in columns], [[show(r) for _, _, show in columns] for r in report["tensors"]],
                     {i for i, (k, _, _) in enumerate(columns) if k in _TEXT}, name=0)
    imgs = "".join(f'<h2>{_E(title)}</h2><img alt="{_E(title)}" src="data:image/png;base64,'
                   f'{base64.b64encode(png).decode()}">' for title, png in images.items())
    made = f", made from {_E(report['source_model'])}" if report.get("source_model") else ""
    return ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            "<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<title>qpack report: {_E(report['source'])}</title><style>{_STYLE}</style></head><body>"
            f"<h1>qpack report: {_E(Path(report['source']).name)}</h1><p class='file'>{_E(report['source'])}{made}</p>"
            f"{_summary(report)}{notes}{_options(report)}{_fidelity(report.get('fidelity'))}{_details(report)}{imgs}"
            f"<h2>Tensors</h2>{tensors}{_kept(report)}"
            f"<p class='muted'>Reproduce: <code>{_E(command)}</code></p></body></html>\n")
