#!/usr/bin/env bash
# `make gpu-wheels-check`: .whl/ (make gpu-wheels) as a GPU machine takes it, checked here. A Python
# 3.12 venv stands in for the GPU image's Python: it gets from PyPI the packages that image already
# has and this project's pipelines use (numpy, pyarrow, pandas, grpcio, ...; never Ray, MLflow or
# pydensecrf), then the carried wheels go into a --target folder with --no-index --no-deps, as there,
# and infra/gpu_wheels_check.py runs Ray, Ray Data, pydensecrf and MLflow from it.
set -euo pipefail
cd "$(dirname "$0")/.."
PY_VERSION=${GPU_PYTHON_VERSION:-3.12}
OUT=${GPU_WHEELS_DIR:-.whl}
[ -n "$(ls "$OUT"/*.whl 2>/dev/null)" ] || { echo "gpu_wheels_check: no wheels in $OUT: make gpu-wheels" >&2; exit 2; }
py=$(ls -d "${PYENV_ROOT:-$HOME/.pyenv}"/versions/"$PY_VERSION".*/bin/python3 2>/dev/null | sort -V | tail -1)
[ -x "$py" ] || py=$(command -v "python$PY_VERSION")
work=${GPU_WHEELS_CHECK_DIR:-/tmp/deeplab-gpu-wheels-check}
rm -rf "$work/site" && mkdir -p "$work"
[ -x "$work/venv/bin/python" ] || "$py" -m venv "$work/venv"
# what the GPU image holds (device/KINDS.md's list), as far as Ray, Ray Data, Train and MLflow use it
"$work/venv/bin/python" -m pip install -q numpy pandas pyarrow pillow scipy grpcio protobuf aiohttp aiohttp-cors \
    msgpack pyyaml requests click filelock packaging psutil fsspec prometheus-client annotated-doc anyio h11 \
    typing-extensions urllib3 idna certifi charset-normalizer markupsafe six python-dateutil
"$work/venv/bin/python" -m pip install -q --no-index --no-deps --no-compile --target "$work/site" "$OUT"/*.whl
PYTHONPATH="$work/site" "$work/venv/bin/python" infra/gpu_wheels_check.py
