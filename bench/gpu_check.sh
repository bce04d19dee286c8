#!/usr/bin/env bash
# The prepared GPU check (#25, #26): one command on a lent GPU machine, ~8 minutes on one H200, every
# figure into $OUT (default ./gpu_check_out). Needs .whl/ from `make gpu-wheels` beside this checkout.
#   device run:  bash bench/gpu_check.sh          (carry: .whl)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_check_out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.csv" 2>&1
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl 2>&1 | tail -3
export PYTHONPATH=/tmp/site:$PWD
# the CRF first (#26): both mean-field loops, pydensecrf's labels, the Cityscapes frame
timeout 180 python3 bench/crf.py --cityscapes --images 4 --repeats 3 2>&1 | tee "$OUT/crf.log"
# then the pipeline (#25): train, segment (+ the CPU path's masks), evaluate through Ray on the GPU
timeout 420 python3 bench/gpu_pipeline.py --out "$OUT/gpu_pipeline.jsonl" --work /tmp/gpu-pipeline 2>&1 \
    | tail -200 > "$OUT/gpu_pipeline.log"
tail -12 "$OUT/gpu_pipeline.log"
