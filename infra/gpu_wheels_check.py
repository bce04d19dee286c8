"""`make gpu-wheels-check`, second half: run by a Python 3.12 whose packages are a GPU image's (no Ray,
MLflow or pydensecrf) with .whl/ installed into a --target folder on PYTHONPATH: the carried wheels
import and work together there, as the GPU check needs them (a Ray task, Ray Data's map_batches,
pydensecrf's CRF, an MLflow run in a sqlite store). Prints one JSON line; exits 1 on a failure."""
from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import numpy as np


def main() -> None:
    import mlflow
    import pydensecrf.densecrf as dcrf
    import ray

    report = {"python": sys.version.split()[0], "ray": ray.__version__, "mlflow": mlflow.__version__}
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        report["ray_task"] = ray.get(ray.remote(lambda x: x * 2).remote(21))
        rows = ray.data.range(64).map_batches(lambda b: {"id": b["id"] * 2}, batch_size=16).take_all()
        report["ray_data_rows"] = sum(1 for r in rows if r["id"] % 2 == 0)
    finally:
        ray.shutdown()

    crf = dcrf.DenseCRF2D(8, 6, 3)
    probs = np.random.default_rng(0).dirichlet(np.ones(3), size=48).T.astype(np.float32)
    crf.setUnaryEnergy(np.ascontiguousarray(-np.log(probs)))
    crf.addPairwiseGaussian(sxy=3, compat=3)
    q = np.asarray(crf.inference(5), np.float32)
    report["pydensecrf_sums_to_one"] = bool(np.allclose(q.sum(0), 1, atol=1e-4))

    with tempfile.TemporaryDirectory() as tmp:
        mlflow.set_tracking_uri(f"sqlite:///{Path(tmp) / 'mlflow.db'}")
        with mlflow.start_run() as run:
            mlflow.log_metric("images_per_s", 1.0)
        report["mlflow_metric"] = mlflow.get_run(run.info.run_id).data.metrics["images_per_s"]
    ok = report["ray_task"] == 42 and report["ray_data_rows"] == 64 and report["pydensecrf_sums_to_one"] \
        and report["mlflow_metric"] == 1.0
    report["ok"] = ok
    print(json.dumps(report))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
