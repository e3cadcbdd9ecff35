"""`qpack sweep`: schemes x bit widths x granularities, the knee, and per-tensor sensitivity."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from contextlib import closing
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from qpack.converter.convert import convert, quantize_weight
from qpack.converter.datasets import Inputs
from qpack.converter.evaluate import classification, evaluate, fidelity_loss, output_fidelity, run_all
from qpack.converter.policy import Policy
from qpack.converter.quant import get_quantizer
from qpack.converter.runtime import open_runner
from qpack.formats.atomic import prepare_folder, scratch_folder, write_bytes_atomic
from qpack.formats.errors import OptionError
from qpack.formats.model import Head, SourceModel
from qpack.formats.qpk.spec import MAX_BITS, MIN_BITS
from qpack.formats.registry import open_model, restore_model

CSV_COLUMNS = ("scheme", "granularity", "bits", "loss_points", "accuracy", "top1_agreement", "min_cosine", "qpk_bytes",
               "bits_per_weight")


def parse_bits(text: str) -> list[int]:
    """'8..2', '8,6,4' or '4' -> descending list of widths in 1..16 (each scheme keeps those in its own range)."""
    try:
        if ".." in text:
            a, b = (int(t) for t in text.split(".."))
            widths = list(range(max(a, b), min(a, b) - 1, -1))
        else:
            widths = sorted({int(t) for t in text.split(",")}, reverse=True)
    except ValueError:
        raise OptionError(f"--bits expects a range like 8..2 or a list like 8,6,4, got {text!r}") from None
    if not widths or not all(MIN_BITS <= b <= MAX_BITS for b in widths):
        raise OptionError(f"--bits values must lie in {MIN_BITS}..{MAX_BITS}, got {text!r}")
    return widths


def parse_schemes(text: str, sensitivity_bits: int) -> list[str]:
    """'asym,sym' -> registered scheme names; the sensitivity width is checked against asym."""
    names = [s.strip() for s in text.split(",") if s.strip()]
    for s in names:
        get_quantizer(s)
    if sensitivity_bits:
        try:
            get_quantizer(SENSITIVITY_SCHEME).check_bits(sensitivity_bits)
        except OptionError as e:
            raise OptionError(f"--sensitivity-bits {sensitivity_bits}: {e} (0 skips the ranking)") from None
    return names


GRANULARITIES = {"both": ["tensor", "channel"], "tensor": ["tensor"], "channel": ["channel"]}
SENSITIVITY_SCHEME = "asym"  # the one-tensor-at-a-time ranking quantizes with the plain default scheme


def parse_granularity(text: str) -> list[str]:
    try:
        return GRANULARITIES[text]
    except KeyError:
        raise OptionError(f"--granularity must be tensor, channel or both, not {text!r}") from None


def knee(rows: list[dict[str, Any]], tolerance: float) -> int | None:
    """Lowest width whose loss, and that of every wider one in the sweep, stays within `tolerance` points."""
    best = None
    for r in sorted(rows, key=lambda r: -r["bits"]):
        if r["loss_points"] > tolerance:
            break
        best = r["bits"]
    return best


def _cell(model: Path, src: SourceModel, inputs: Inputs, reference, policy: Policy, tmp: Path) -> dict[str, Any]:
    qpk = tmp / "cell.qpk"
    converted = convert(src, policy, qpk)
    result = evaluate(model, inputs, qpk=qpk, reference=reference)
    c = result["classification"] or {}
    params = sum(t.count for t in converted.tensors)
    stored = sum(t.stored_bytes + t.param_bytes for t in converted.tensors)
    return {
        "scheme": policy.scheme, "granularity": "channel" if policy.per_channel else "tensor", "bits": policy.bits,
        "loss_points": fidelity_loss(result), "accuracy": c.get("accuracy_quantized"), "top1_agreement": c.get("top1_agreement"),
        "min_cosine": min(o["cosine"] for o in result["outputs"]), "qpk_bytes": converted.size,
        "bits_per_weight": round(stored * 8 / params, 4) if params else None,
    }


def sensitivity(src: SourceModel, inputs: Inputs, reference, scheme: str, bits: int, tmp: Path,
                progress: Callable[[], None] | None = None, head: Head | None = None) -> list[dict[str, Any]]:
    """Quantize one tensor at a time (per-tensor, at `bits`), the rest float; rank by the damage done
    (`head`: what computes the first output, which says whether it holds class scores)."""
    get_quantizer(scheme).check_bits(bits)
    policy = Policy(scheme, bits)
    rows = []
    for w in src.weights:
        if not policy.decide(w).quantize:
            continue
        codes, params = quantize_weight(w, scheme, bits, None)
        y = get_quantizer(scheme).dequantize(codes, params, bits, None)
        out = tmp / f"one.{src.format}"
        restore_model(src.format, src.skeleton({w.key}), {w.key: partial(np.asarray, y)}, out)
        got = run_all(open_runner(out), inputs)
        result: dict[str, Any] = {"outputs": output_fidelity(reference, got, [str(i) for i in range(len(got))]),
                  "classification": classification(reference[0], got[0], inputs.labels, [], 1.0, head, inputs.description)}
        rows.append({"name": w.name, "key": w.key, "params": w.size, "loss_points": fidelity_loss(result),
                     "min_cosine": min(o["cosine"] for o in result["outputs"])})
        if progress:
            progress()
    rows.sort(key=lambda r: (-r["loss_points"], r["min_cosine"]))
    for rank, r in enumerate(rows, 1):
        r["rank"] = rank
    return rows


def run_sweep(model: Path, inputs: Inputs, schemes: list[str], widths: list[int], granularities: list[str],
              tolerance: float, sensitivity_bits: int, progress: Callable[[str], None] | None = None,
              clip: str = "minmax", target: str = "qpk") -> dict[str, Any]:
    """Every valid (scheme, granularity, bits) cell, the knee of each curve, and the sensitivity ranking;
    with a `target` (`--for`), only the cells it runs natively."""
    with closing(open_model(model)) as src:
        return _sweep(model, src, inputs, schemes, widths, granularities, tolerance, sensitivity_bits, progress, clip, target)


def _sweep(model: Path, src: SourceModel, inputs: Inputs, schemes: list[str], widths: list[int], granularities: list[str],
           tolerance: float, sensitivity_bits: int, progress: Callable[[str], None] | None, clip: str,
           target: str = "qpk") -> dict[str, Any]:
    from qpack.converter.deploy import runs


    runner = open_runner(model)
    reference = run_all(runner, inputs)
    head = src.output_heads().get(runner.output_names[0])
    base = classification(reference[0], reference[0], inputs.labels, [], 1.0, head, inputs.description) or {}
    cells = []
    with scratch_folder("qpack-sweep-") as tmp:
        for g in granularities:
            for s in schemes:
                for b in widths:
                    if not get_quantizer(s).spec().min_bits <= b <= get_quantizer(s).spec().max_bits:
                        continue
                    policy = Policy(s, b, per_channel=g == "channel", clip=clip, target=target)
                    if not runs(policy):
                        continue
                    cells.append(_cell(model, src, inputs, reference, policy, Path(tmp)))
                    if progress:
                        progress(f"{s} {g} {b}-bit")
        ranking = sensitivity(src, inputs, reference, SENSITIVITY_SCHEME, sensitivity_bits, Path(tmp),
                              (lambda: progress("sensitivity")) if progress else None, head) if sensitivity_bits else []
    knees = {}
    for g in granularities:
        for s in schemes:
            rows = [c for c in cells if c["scheme"] == s and c["granularity"] == g]
            if rows:
                knees[f"{s}/{g}"] = knee(rows, tolerance)
    return {
        "model": str(model), "inputs": inputs.description, "samples": inputs.count,
        "float_accuracy": base.get("accuracy_original"), "tolerance_points": tolerance, "clip": clip,
        "loss_measure": "accuracy points" if inputs.labels is not None and base else
                        ("100 - top-1 agreement %" if base else "100 * (1 - mean output cosine)"),
        "cells": cells, "knee_bits": knees, **({"for": target} if target != "qpk" else {}),
        "sensitivity": {"scheme": SENSITIVITY_SCHEME, "granularity": "tensor", "bits": sensitivity_bits, "ranking": ranking},
    }


def write_outputs(result: dict[str, Any], out: Path) -> list[Path]:
    """sweep.json, sweep.csv and the two plots into folder `out`."""
    import json

    from qpack.converter import plots

    prepare_folder(out)
    buf = io.StringIO()
    w = csv.DictWriter(buf, CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    w.writerows(result["cells"])
    files = {out / "sweep.json": (json.dumps(result, indent=2) + "\n").encode(), out / "sweep.csv": buf.getvalue().encode(),
             out / "accuracy_vs_bits.png": plots.sweep_vs_bits(result), out / "accuracy_vs_size.png": plots.sweep_vs_size(result)}
    for path, data in files.items():
        write_bytes_atomic(path, data)
    return list(files)


