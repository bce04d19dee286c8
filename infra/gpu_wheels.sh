#!/usr/bin/env bash
# `make gpu-wheels`: .whl/, the Python 3.12 wheels a GPU machine without a package index needs to run
# this project's pipelines, when its Python already holds torch, torchvision, numpy, pillow, pyarrow,
# scipy, matplotlib, pandas, grpcio, protobuf, aiohttp, pyyaml, requests, click, ... (a CUDA image's
# usual set; docs/gpu.md). Carried: Ray without its Java jars, RLlib, Serve, LLM and the dashboard's
# web UI (~42 MiB instead of ~79), mlflow-skinny with what a sqlite store needs, pycocotools, and
# pydensecrf2 built from source with a Python 3.12 here (pyenv's), its debug symbols stripped.
# Versions are this project's pins (constraints.txt). The set is ~60 MiB: it travels with a checkout.
# There:  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
#         export PYTHONPATH=/tmp/site:$PWD
# `make gpu-wheels-check` installs it so into a Python 3.12 here and runs Ray, pydensecrf and MLflow.
set -euo pipefail
cd "$(dirname "$0")/.."
PY_VERSION=${GPU_PYTHON_VERSION:-3.12}
OUT=${GPU_WHEELS_DIR:-.whl}

pin() {  # the constraints.txt line of a distribution (- and _ alike), or a clear failure
    local line
    line=$(grep -i -E "^${1//[-_]/[-_]}==" constraints.txt | head -1)
    [ -n "$line" ] || { echo "gpu_wheels: $1 is not pinned in constraints.txt" >&2; exit 2; }
    echo "$line"
}

build_python() {  # a Python $PY_VERSION to build pydensecrf2 with: pyenv's, else one on PATH that runs
    local found
    found=$(ls -d "${PYENV_ROOT:-$HOME/.pyenv}"/versions/"$PY_VERSION".*/bin/python3 2>/dev/null | sort -V | tail -1)
    if [ -z "$found" ] && "python$PY_VERSION" -c "" 2>/dev/null; then found=$(command -v "python$PY_VERSION"); fi
    echo "$found"
}

rm -rf "$OUT" && mkdir -p "$OUT"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
PLATFORMS="--platform manylinux_2_34_x86_64 --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64
           --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any"
download() {  # binary wheels for CPython $PY_VERSION on x86-64 Linux, no dependencies resolved
    # shellcheck disable=SC2086
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PY_VERSION" --implementation cp \
        $PLATFORMS -d "$@"
}

echo "gpu_wheels: Ray for Python $PY_VERSION, without what a headless GPU run needs none of"
download "$tmp" "$(pin ray)"
python3 - "$tmp" "$OUT" <<'PY'
import glob, sys, zipfile
src = glob.glob(sys.argv[1] + "/ray-*.whl")[0]
dst = sys.argv[2] + "/" + src.rsplit("/", 1)[1]
# Java, RLlib, Serve, LLM, the dashboard's web UI and source maps, and the runtime-env agent's vendored
# aiohttp (the machine's own serves it)
drop = ("ray/jars/", "ray/rllib/", "ray/serve/", "ray/llm/", "ray/dashboard/client/build/",
        "ray/_private/runtime_env/agent/thirdparty_files/")
with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zout:
    for info in zin.infolist():
        if info.filename.startswith(drop) or info.filename.endswith(".js.map"):
            continue
        data = zin.read(info.filename)
        if info.filename.endswith(".dist-info/RECORD"):  # the record lists only what the wheel holds
            data = b"\n".join(line for line in data.split(b"\n")
                              if not line.decode().startswith(drop) and ".js.map," not in line.decode())
        zout.writestr(info, data)
PY

echo "gpu_wheels: MLflow (skinny, sqlite store), Ray Train's and Data's pure-Python dependencies, pycocotools"
packages=(jsonschema jsonschema-specifications referencing rpds-py mlflow-skinny mlflow-tracing sqlalchemy alembic
          sqlparse cachetools databricks-sdk gitpython gitdb smmap opentelemetry-api opentelemetry-sdk
          opentelemetry-proto opentelemetry-semantic-conventions pydantic pydantic-core annotated-types
          typing-inspection python-dotenv fastapi starlette uvicorn mako graphql-core pycocotools importlib-metadata
          cryptography cffi pycparser)
pins=()
for name in "${packages[@]}"; do pins+=("$(pin "$name")"); done
download "$OUT" "${pins[@]}" greenlet  # greenlet: SQLAlchemy's, unpinned here (no 3.11 wheel is needed)

py=$(build_python)
[ -x "$py" ] || { echo "gpu_wheels: no Python $PY_VERSION here to build pydensecrf2 with (pyenv install $PY_VERSION)" >&2; exit 2; }
echo "gpu_wheels: pydensecrf2 built from source with $py"
"$py" -m pip wheel -q --no-deps -w "$tmp/crf" "$(pin pydensecrf2)"
python3 - "$tmp/crf" "$OUT" <<'PY'
import glob, os, subprocess, sys, tempfile, zipfile
src = glob.glob(sys.argv[1] + "/pydensecrf2-*.whl")[0]
dst = sys.argv[2] + "/" + os.path.basename(src)
with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zout:
    for info in zin.infolist():
        data = zin.read(info.filename)
        if info.filename.endswith(".so"):  # debug symbols: 12 MB -> ~2 MB
            with tempfile.NamedTemporaryFile(suffix=".so", delete=False) as f:
                f.write(data)
            subprocess.run(["strip", "--strip-debug", f.name], check=True)
            with open(f.name, "rb") as f:
                data = f.read()
            os.unlink(f.name)
        zout.writestr(info, data)
PY
echo "gpu_wheels: $(ls "$OUT" | wc -l) wheels, $(du -sh "$OUT" | cut -f1) in $OUT"
