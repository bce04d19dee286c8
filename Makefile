# The README's two commands: `make demo` and `make test`. Both set up .venv first when needed.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PYDENSECRF := "pydensecrf2; python_version < '3.13'"  # the `pydensecrf` extra of pyproject.toml
DEMO_DIR ?= demo_out

.PHONY: setup demo test test-fast bench clean stack-up stack-down stack-status gpu-wheels gpu-wheels-check

setup: $(STAMP)

# Idempotent: reinstalls only when the project's dependency files change. pip byte-compiles on one
# core; compileall afterwards uses every core (set-up 227 -> 142 s and 214 -> 194 s on 2 cores, two
# back-to-back pairs).
# Like pip, it skips a file this Python cannot compile (torch ships a Python 3.12-only test helper).
# The packages' own test suites (pandas, sympy, scipy... 17% of the source) are never imported: not
# compiled (42 -> 35 CPU-s, 23 -> 19 s on 2 cores).
# The `pydensecrf` extra (pyproject.toml) ships only as source: its build (~30 s on one core where pip's
# wheel cache does not hold it yet) runs on the other core while pip installs the rest (bare machine:
# set-up 100 -> 78 s on 2 cores), then the wheel it left is installed (a failed build is built again
# there, with pip's error shown).
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip>=24"
	$(PY) -m pip wheel --quiet --no-deps -c constraints.txt -w $(VENV)/wheels $(PYDENSECRF) \
		> $(VENV)/pydensecrf2-build.log 2>&1 & \
	$(PY) -m pip install --quiet --no-compile -c constraints.txt -e ".[test]"; status=$$?; wait; exit $$status
	$(PY) -m pip install --quiet --no-compile --no-deps -c constraints.txt --find-links $(VENV)/wheels $(PYDENSECRF)
	-$(PY) -m compileall -qq -j 0 -x '/tests/' $(VENV)/lib
	touch $(STAMP)

# The project's own modules byte-compiled before a run: where PYTHONDONTWRITEBYTECODE is set (CI images,
# containers) every process would compile them again on import, each Ray worker included.
COMPILE_PROJECT := $(PY) -m compileall -qq -j 0 deeplab_core pipelines infra tests bench

demo: $(STAMP)
	$(COMPILE_PROJECT)
	$(PY) -m pipelines.demo --workdir $(DEMO_DIR)

test: $(STAMP)
	$(COMPILE_PROJECT)
	$(PY) -m pytest -q -p no:cacheprovider -n 2 --dist load --timeout=900 --durations=15 tests

test-fast: $(STAMP)
	$(COMPILE_PROJECT)
	$(PY) -m pytest -q -p no:cacheprovider -n 2 --dist load -m "not slow" tests

bench: $(STAMP)
	$(PY) bench/preprocess.py
	$(PY) bench/train.py
	$(PY) bench/models.py
	$(PY) bench/segment.py
	$(PY) bench/segment_photos.py
	$(PY) bench/monitoring.py
	$(PY) bench/crf.py
	$(PY) bench/gpu.py --size 129 --batch 2 --steps 3 --warmup 1 --compile none  # CPU smoke run: its figures are for GPUs
	$(PY) bench/soak.py

# The real stack on this machine (Ray head + worker, MLflow server, S3 endpoint), all on 127.0.0.1.
stack-up: $(STAMP)
	$(PY) -m infra.local_stack up

stack-down: $(STAMP)
	$(PY) -m infra.local_stack down

stack-status: $(STAMP)
	$(PY) -m infra.local_stack status

# The wheels a GPU machine without a package index needs (Python 3.12; docs/gpu.md), and their check here.
gpu-wheels:
	bash infra/gpu_wheels.sh

gpu-wheels-check:
	bash infra/gpu_wheels_check.sh

clean:
	rm -rf $(DEMO_DIR) ablation_out .pytest_cache
