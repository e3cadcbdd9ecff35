"""The C decoder (qpk.h): decode rate of exported tables, whole and streamed, qpk_open rate, code size,
and qpk_unpack's rate on ans-coded codes against the Python reader's (numba) in the same run.

    python bench/bench_export_c.py        (needs gcc)

Converts the bundled sample at 4 bits per channel in each scheme (lut with float16 codebooks),
exports it with `--to c`, compiles a timing program with gcc -O2 and prints medians of several runs.
For ans: the PP-OCRv4 recognizer (rapidocr-onnxruntime; else the sample) at asym 4 bits per channel,
dq 5 and sym 12, `--codec ans`, read whole by qpk_open and each tensor's codes unpacked.
"""

from __future__ import annotations

import importlib.metadata as md
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from qpack.converter.convert import convert  # noqa: E402
from qpack.converter.export import export  # noqa: E402
from qpack.converter.policy import Policy  # noqa: E402
from qpack.formats.onnx_model import OnnxModel  # noqa: E402
from qpack.formats.qpk import ANS, QpkReader  # noqa: E402

RUNS = 5
UNPACK = r"""
#define _POSIX_C_SOURCE 199309L
#define QPK_IMPLEMENTATION
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include "qpk.h"

static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec * 1e-9; }

int main(int argc, char **argv)
{
    FILE *f = fopen(argv[1], "rb");
    long len;
    unsigned char *qpk, *work;
    void *index;
    size_t need = 0, codes = 0, rounds;
    qpk_file file;
    qpk_tensor *t, raw;
    uint32_t (*shape)[QPK_MAX_RANK], i, n = 0;
    double t0;
    (void)argc;
    if (!f || fseek(f, 0, SEEK_END) || (len = ftell(f)) < 0 || fseek(f, 0, SEEK_SET)) return 2;
    qpk = malloc((size_t)len);
    if (!qpk || fread(qpk, 1, (size_t)len, f) != (size_t)len) return 2;
    index = malloc(qpk_open_size(qpk, (size_t)len) + 1);
    if (!index || qpk_open(qpk, (size_t)len, index, qpk_open_size(qpk, (size_t)len), &file)) return 2;
    t = malloc(file.tensor_count * sizeof *t);
    shape = malloc(file.tensor_count * sizeof *shape);
    if (!t || !shape) return 2;
    for (i = 0; i < file.tensor_count; i++) { /* the ans-coded tensors, described once: only qpk_unpack is timed */
        if (qpk_get_tensor(&file, i, &t[n], shape[n])) return 1;
        if (t[n].codec != QPK_ANS) continue;
        if (qpk_unpack_size(&t[n]) > need) need = qpk_unpack_size(&t[n]);
        n++;
    }
    work = malloc(need ? need : 1);
    if (!work) return 2;
    t0 = now();
    for (rounds = 0; rounds < 5; rounds++)
        for (i = 0; i < n; i++) {
            if (qpk_unpack(&t[i], work, need, &raw)) return 1;
            codes += (size_t)t[i].count;
        }
    printf("%.1f\n", codes / (now() - t0) / 1e6);
    return 0;
}
"""


def _unpack_rates(gcc: str, d: Path) -> None:
    """Million codes a second over the ans-coded tensors: qpk_unpack against the Python reader's
    decoder (formats.qpk.ans.decode_codes, its compiled kernel), each from the stream to packed codes."""
    from qpack.formats.qpk import BlobKind
    from qpack.formats.qpk.ans import decode_codes

    try:
        rec = Path(md.distribution("rapidocr-onnxruntime").locate_file("rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx"))
    except md.PackageNotFoundError:
        rec = ROOT / "samples" / "digits_cnn.onnx"
    src = d / "unpack.c"
    src.write_text(UNPACK)
    shutil.copy(ROOT / "converter" / "export" / "qpk.h", d / "qpk.h")
    exe = d / "unpack"
    subprocess.run([gcc, "-std=c99", "-O2", f"-I{d}", "-o", str(exe), str(src)], check=True)
    print(f"\nans codes unpacked, {rec.name}: million codes a second (medians of {RUNS})")
    print(f"{'setting':28} {'qpk_unpack':>10} {'Python decoder':>14} {'C / Python':>11}")
    for label, policy in (("asym 4 per channel", Policy("asym", 4, per_channel=True)), ("dq 5", Policy("dq", 5)),
                          ("sym 12", Policy("sym", 12))):
        qpk = d / "ans.qpk"
        model = OnnxModel(rec)
        try:
            convert(model, policy, qpk, codec=ANS)
        finally:
            model.close()
        py = []
        with QpkReader(qpk) as q:
            coded = [(bytes(q.blob_view(e.codes, BlobKind.CODES)), e.bits, e.count) for e in q.entries
                     if q.blobs[e.codes].codec == ANS.id]
            decode_codes(*coded[0])  # the kernels compiled
            for _ in range(RUNS):
                t0 = time.perf_counter()
                for stream, bits, count in coded:
                    decode_codes(stream, bits, count)
                py.append(sum(c for _, _, c in coded) / (time.perf_counter() - t0) / 1e6)
        c = [float(subprocess.run([str(exe), str(qpk)], capture_output=True, text=True, check=True).stdout) for _ in range(RUNS)]
        cm, pm = statistics.median(c), statistics.median(py)
        print(f"{label:28} {cm:10.1f} {pm:14.1f} {cm / pm:11.2f}")
PROGRAM = r"""
#define _POSIX_C_SOURCE 199309L
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include WEIGHTS

static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec * 1e-9; }
static float buf[WEIGHTS_MAX > 256 ? WEIGHTS_MAX : 256];

int main(int argc, char **argv)
{
    size_t i, weights = 0, rounds = 0;
    uint64_t first;
    double t0, whole, streamed, opened;
    FILE *f = fopen(argv[1], "rb");
    long len;
    unsigned char *qpk;
    void *index;
    size_t need;
    qpk_file file;
    (void)argc;
    if (!f || fseek(f, 0, SEEK_END) || (len = ftell(f)) < 0 || fseek(f, 0, SEEK_SET)) return 2;
    qpk = malloc((size_t)len);
    if (!qpk || fread(qpk, 1, (size_t)len, f) != (size_t)len) return 2;
    need = qpk_open_size(qpk, (size_t)len);
    if (!(index = malloc(need + 1))) return 2;
    for (i = 0; i < qpk_tensor_count; i++) weights += (size_t)qpk_tensors[i].count;
    t0 = now();
    for (rounds = 0; rounds < 200; rounds++)
        for (i = 0; i < qpk_tensor_count; i++)
            if (qpk_decode_tensor(&qpk_tensors[i], buf)) return 1;
    whole = now() - t0;
    t0 = now();
    for (rounds = 0; rounds < 200; rounds++)
        for (i = 0; i < qpk_tensor_count; i++)
            for (first = 0; first < qpk_tensors[i].count; first += 256) {
                uint64_t n = qpk_tensors[i].count - first < 256 ? qpk_tensors[i].count - first : 256;
                if (qpk_decode_range(&qpk_tensors[i], first, (size_t)n, buf)) return 1;
            }
    streamed = now() - t0;
    t0 = now();
    for (rounds = 0; rounds < 200; rounds++)
        if (qpk_open(qpk, (size_t)len, index, need, &file)) return 1;
    opened = now() - t0;
    printf("%.1f %.1f %.1f\n", 200.0 * weights / whole / 1e6, 200.0 * weights / streamed / 1e6, 200.0 * len / opened / 1e6);
    return 0;
}
"""


def _size(obj: Path) -> int:
    """Text + data bytes of an object file."""
    out = subprocess.run(["size", str(obj)], capture_output=True, text=True, check=True).stdout.split("\n")[1].split()
    return int(out[0]) + int(out[1])


def main() -> None:
    gcc = shutil.which("gcc")
    if gcc is None:
        sys.exit("gcc is not installed")
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        print(f"{'scheme':8} {'decode Mw/s':>12} {'256-weight ranges Mw/s':>23} {'qpk_open MB/s':>14}")
        for scheme in ("asym", "sym", "pow2", "lut"):
            qpk = d / f"{scheme}.qpk"
            convert(OnnxModel(ROOT / "samples" / "digits_cnn.onnx"), Policy(scheme, 4, per_channel=True), qpk)
            files, _ = export(qpk, "c", d / scheme)
            (d / scheme / "bench.c").write_text(PROGRAM.replace("WEIGHTS_MAX", "DIGITS_CNN_MAX_COUNT")
                                                .replace("WEIGHTS", f'"{files[1].name}"'))
            exe = d / scheme / "bench"
            subprocess.run([gcc, "-std=c99", "-O2", f"-I{d / scheme}", "-o", str(exe), str(d / scheme / "bench.c"), str(files[2])],
                           check=True)
            runs = [list(map(float, subprocess.run([str(exe), str(qpk)], capture_output=True, text=True, check=True).stdout.split()))
                    for _ in range(RUNS)]
            med = [statistics.median(r[k] for r in runs) for k in range(3)]
            print(f"{scheme:8} {med[0]:12.1f} {med[1]:23.1f} {med[2]:14.1f}")
        if shutil.which("size"):
            header = files[0]
            sizes = {}
            for name, flags in (("decoder only (QPK_NO_READER)", ["-DQPK_NO_READER"]), ("decoder + container reader", [])):
                obj = d / "qpk.o"
                subprocess.run([gcc, "-std=c99", "-Os", "-DQPK_IMPLEMENTATION", *flags, "-x", "c", "-c", str(header), "-o", str(obj)],
                               check=True)
                sizes[name] = _size(obj)
            for name, n in sizes.items():
                print(f"qpk.h -Os {name}: {n:,} bytes of code and data")
        _unpack_rates(gcc, d)


if __name__ == "__main__":
    main()
