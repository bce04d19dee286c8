"""An install without the `pydensecrf` extra (no C++ compiler, a slim image, a new Python): the
package imports, and segment, evaluate and crf_search run the CRF in PyTorch and say so. Run in a
subprocess where `import pydensecrf` fails (a package on PYTHONPATH that raises ImportError, which Ray's
workers inherit too); the agreement tests elsewhere keep comparing with the real pydensecrf."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.conftest import sqlite_store

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    import pyarrow.parquet as pq
    from mlflow.tracking import MlflowClient
    from deeplab_core.crf import pydensecrf_installed
    from deeplab_core.data.synth import write_voc
    from pipelines import crf_search, evaluate, preprocess, segment
    from pipelines.cli import init_ray, run
    from tests.conftest import save_random_voc_model

    init_ray(min_cpus=4)  # the CLIs share one Ray here: room for model and CRF actors and the tasks feeding them
    work = Path(sys.argv[1])
    found = {"installed": pydensecrf_installed()}
    write_voc(work / "raw", train=2, val=3, seed=2, size=(64, 48), classes=4)
    assert run(preprocess.main, ["--dataset", "voc", "--root", str(work / "raw"), "--out", str(work / "data")]) == 0
    model = str(save_random_voc_model(work / "model"))
    images = str(work / "raw" / "VOCdevkit" / "VOC2012" / "JPEGImages")
    found["segment"] = run(segment.main, ["--model", model, "--input", images, "--output", str(work / "seg")])
    found["segment_backends"] = sorted(set(pq.read_table(work / "seg" / "summary").column("crf_backend").to_pylist()))
    found["evaluate"] = run(evaluate.main, ["--model", model, "--data", str(work / "data"), "--split", "val"])
    found["crf_search"] = run(crf_search.main, ["--model", model, "--data", str(work / "data"), "--images", "2",
                                                "--points", "2", "--rounds", "1", "--iterations", "2"])
    client = MlflowClient()
    runs = {e.name: client.search_runs([e.experiment_id]) for e in client.search_experiments()}
    found["params"] = {name: sorted({r.data.params.get("crf_backend") or r.data.tags.get("eval.crf_backend", "")
                                     for r in rs}) for name, rs in runs.items() if rs}
    found["asked_for_pydensecrf"] = run(segment.main, ["--model", model, "--input", images, "--output",
                                                       str(work / "seg2"), "--crf-backend", "pydensecrf"])
    print(json.dumps(found), file=sys.__stdout__, flush=True)  # the CLIs point sys.stdout at stderr
""")


def test_without_pydensecrf_the_crf_runs_in_pytorch(tmp_path):
    shadow = tmp_path / "shadow" / "pydensecrf"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text('raise ImportError("no module named pydensecrf (the test hides it)")\n')
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "shadow"), str(ROOT)]),
           "MLFLOW_TRACKING_URI": sqlite_store(tmp_path / "mlflow.db"), "RAY_ADDRESS": "local"}
    result = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], capture_output=True, text=True, cwd=ROOT,
                            env=env, timeout=400)
    assert result.returncode == 0, result.stderr[-4000:]
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert found["installed"] is False
    assert (found["segment"], found["evaluate"], found["crf_search"]) == (0, 0, 0)
    assert found["segment_backends"] == ["torch"]
    assert all(backends == ["torch"] for backends in found["params"].values()) and len(found["params"]) == 3, found
    assert found["asked_for_pydensecrf"] == 2
    refused = [line for line in result.stderr.splitlines() if "--crf-backend pydensecrf" in line]
    assert refused and "pip install 'deeplab-ray[pydensecrf]'" in refused[-1]
