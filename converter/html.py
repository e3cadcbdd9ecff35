"""One self-contained HTML page: the report's table and totals, pictures embedded as data URIs."""

from __future__ import annotations

import base64
import html
from typing import Any

_STYLE = """body{font-family:system-ui,sans-serif;margin:2em;color:#222}table{border-collapse:collapse;font-size:13px}
td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}td:first-child,th:first-child{text-align:left}
th{background:#f3f3f3}img{max-width:100%;border:1px solid #eee;margin:1em 0}code{background:#f6f6f6}"""

COLUMNS = ("name", "shape", "params", "dtype", "scheme", "bits", "min", "max", "quartiles", "levels_used", "entropy",
           "bit_levels", "sqnr_db", "range_coverage", "bit_efficiency", "exponent_window")


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, list):
        return html.escape(", ".join(f"{x:.4g}" if isinstance(x, float) else str(x) for x in v))
    if isinstance(v, float):
        return f"{v:.4g}"
    return html.escape(f"{v:,}" if isinstance(v, int) else str(v))


def page(report: dict[str, Any], images: dict[str, bytes], command: str) -> str:
    """The HTML page for a report dict and its PNG images."""
    t = report["totals"]
    s = report.get("sizes", {})
    head = "".join(f"<th>{c}</th>" for c in COLUMNS)
    body = "".join("<tr>" + "".join(f"<td>{_cell(r.get(c))}</td>" for c in COLUMNS) + "</tr>" for r in report["tensors"])
    summary = "".join(f"<tr><td>{html.escape(k)}</td><td>{_cell(v)}</td></tr>" for k, v in {**t, **s}.items())
    imgs = "".join(f'<h2>{html.escape(title)}</h2><img alt="{html.escape(title)}" src="data:image/png;base64,'
                   f'{base64.b64encode(png).decode()}">' for title, png in images.items())
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>qpack report</title><style>{_STYLE}</style></head>"
            f"<body><h1>qpack report: {html.escape(report['source'])}</h1><p>Reproduce: <code>{html.escape(command)}</code></p>"
            f"<h2>Totals</h2><table>{summary}</table>{imgs}<h2>Tensors</h2><table><tr>{head}</tr>{body}</table></body></html>\n")
