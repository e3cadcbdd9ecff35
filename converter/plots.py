"""The report's pictures (matplotlib, Agg): channel quartiles, histograms per bit width, per-layer bars."""

from __future__ import annotations

import io
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from numpy.typing import NDArray  # noqa: E402

from qpack.converter.quant import QUANTIZERS  # noqa: E402

MAX_CHANNELS = 32  # a box per channel stops being readable beyond this
_PNG_META = {"Software": None}  # no version strings: the same report gives the same bytes


def _png(fig: plt.Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, metadata=_PNG_META)
    plt.close(fig)
    return buf.getvalue()


def _channels(v: NDArray, axis: int | None) -> list[NDArray]:
    axis = 0 if axis is None else axis
    moved = np.moveaxis(v, axis, 0).reshape(v.shape[axis], -1)
    return [moved[i] for i in range(min(MAX_CHANNELS, moved.shape[0]))]


def channel_quartiles(name: str, x: NDArray, axis: int | None, bits: int, per_channel: bool) -> bytes:
    """Per-channel quartile ranges of one layer: float, then each scheme at `bits`."""
    schemes = [s for s, q in QUANTIZERS.items() if q.spec().min_bits <= bits <= q.spec().max_bits]
    fig, axes = plt.subplots(len(schemes) + 1, 1, figsize=(10, 2.2 * (len(schemes) + 1)), sharex=True, sharey=True)
    rows = [("float", x)]
    qaxis = axis if per_channel else None
    for s in schemes:
        codes, params = QUANTIZERS[s].quantize(x, bits, qaxis)
        rows.append((f"{s} {bits}-bit", QUANTIZERS[s].dequantize(codes, params, bits, qaxis)))
    for ax, (label, v) in zip(axes, rows):
        ax.boxplot(_channels(v, axis), whis=(0, 100), showfliers=False)
        ax.set_ylabel(label)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_title(f"{name}: per-channel range (whiskers min..max, box quartiles)")
    axes[-1].set_xlabel("output channel")
    fig.tight_layout()
    return _png(fig)


def histograms(name: str, x: NDArray, scheme: str, axis: int | None, widths: tuple[int, ...]) -> bytes:
    """Weight histogram of one layer, float against the quantized values at several bit widths."""
    spec = QUANTIZERS[scheme].spec()
    widths = tuple(b for b in widths if spec.min_bits <= b <= spec.max_bits)
    fig, axes = plt.subplots(len(widths), 1, figsize=(10, 2.2 * len(widths)), sharex=True)
    axes = np.atleast_1d(axes)
    bins = np.linspace(float(x.min()), float(x.max()), 121)
    for ax, b in zip(axes, widths):
        codes, params = QUANTIZERS[scheme].quantize(x, b, axis)
        y = QUANTIZERS[scheme].dequantize(codes, params, b, axis)
        ax.hist(x.ravel(), bins=bins, color="0.7", label="float")
        ax.hist(y.ravel(), bins=bins, histtype="step", color="C3", label=f"{scheme} {b}-bit")
        ax.set_yscale("log")
        ax.legend(loc="upper right", fontsize=8)
    axes[0].set_title(f"{name}: weight histogram, float against quantized")
    fig.tight_layout()
    return _png(fig)


def layer_bars(rows: list[dict[str, Any]]) -> bytes:
    """Bits per weight (codes and parameters) and bytes of each quantized tensor."""
    rows = rows[:60]
    names = [r["name"][-28:] for r in rows]
    bpw = [r["stored_bytes"] * 8 / r["params"] for r in rows]
    nbytes = [r["stored_bytes"] for r in rows]
    fig, (a, b) = plt.subplots(2, 1, figsize=(max(8, 0.28 * len(rows) + 3), 7), sharex=True)
    a.bar(range(len(rows)), bpw, color="C0")
    a.set_ylabel("bits / weight")
    a.axhline(float(np.mean([r["bits"] for r in rows])) if rows else 0, color="0.5", lw=0.8, ls="--")
    b.bar(range(len(rows)), nbytes, color="C1")
    b.set_ylabel("bytes")
    b.set_xticks(range(len(rows)), names, rotation=90, fontsize=7)
    a.set_title("per-layer storage: codes + scales")
    fig.tight_layout()
    return _png(fig)


def score(result: dict[str, Any], cell: dict[str, Any]) -> float:
    """What the plots show: accuracy (%) with labels, else 100 - loss."""
    if cell["accuracy"] is not None:
        return 100 * cell["accuracy"]
    return 100 - cell["loss_points"]


def _series(result: dict[str, Any]):
    keys = sorted({(c["scheme"], c["granularity"]) for c in result["cells"]})
    for i, (s, g) in enumerate(keys):
        rows = sorted((c for c in result["cells"] if c["scheme"] == s and c["granularity"] == g), key=lambda c: c["bits"])
        yield i, f"{s} per-{g}", rows, [score(result, c) for c in rows]


def _sweep_plot(result: dict[str, Any], x_key: str, xlabel: str, title: str, log_x: bool) -> bytes:
    fig, ax = plt.subplots(figsize=(8, 5))
    for i, label, rows, ys in _series(result):
        ax.plot([c[x_key] for c in rows], ys, marker="o", color=f"C{i}", ls="-" if "channel" in label else "--", label=label)
    if result.get("float_accuracy") is not None:
        ax.axhline(100 * result["float_accuracy"], color="0.4", lw=0.8, label="float")
    if log_x:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("accuracy %" if result.get("float_accuracy") is not None else "100 - loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _png(fig)


def sweep_vs_bits(result: dict[str, Any]) -> bytes:
    """Accuracy (or fidelity) against bit width, one line per scheme and granularity."""
    return _sweep_plot(result, "bits", "bits per weight code", "accuracy against bit width", False)


def sweep_vs_size(result: dict[str, Any]) -> bytes:
    """Accuracy (or fidelity) against the .qpk's size in bytes."""
    return _sweep_plot(result, "qpk_bytes", ".qpk bytes", "accuracy against artifact size", True)
