"""Tune the dense CRF as the DeepLab paper did: coarse-to-fine search over the bilateral kernel
(w1, σα, σβ) with the Gaussian kernel fixed (w2 = 3, σγ = 3), on a subset of val.

    python pipelines/crf_search.py --model models:/deeplab-voc/3 --data data/parquet/voc --images 100

The network runs once per image; its coarse scores are shared through the object store and every
CRF setting of a round is scored by its own Ray task. The best setting is logged to MLflow as the
params crf.* of a run in experiment "crf-search" (with the whole search table as an artifact), so
`segment.py --crf-params runs:/<run id>` and `evaluate.py --crf-params …` can use it. Last stdout
line: JSON with run_id, best, miou, miou_no_crf, evaluated.
"""
from __future__ import annotations

import argparse
import csv
import io
import os
import tempfile
import warnings

import mlflow
import ray

from deeplab_core.checkpoint import load_model
from deeplab_core.crf import CRFParams
from deeplab_core.data.codec import decode_row
from deeplab_core.inference import label_map, predict_coarse
from deeplab_core.metrics import ConfusionMatrix
from deeplab_core.search import coarse_to_fine
from pipelines import storage, tracking
from pipelines.cli import Progress, emit_summary, init_ray, log, run
from pipelines.datasets import load_manifest, read_rows, split_files
from pipelines.model_uri import download_model
from pipelines.segment import add_crf_backend_argument, crf_backend

EXPERIMENT = "crf-search"
# The paper's ranges: w1 in [3, 6], σα in [30, 100], σβ in [3, 6].
AXES = {"bi_w": (3.0, 6.0), "bi_xy_std": (30.0, 100.0), "bi_rgb_std": (3.0, 6.0)}


def crf_miou(examples: list[tuple], num_classes: int, crf: dict | None, backend: str = "pydensecrf") -> float:
    """mIoU of (image, coarse scores, label) examples, refined with `crf` (None: no CRF)."""
    cm = ConfusionMatrix(num_classes)
    params = CRFParams(**crf) if crf is not None else None
    for image, coarse, label in examples:
        cm.update(label_map(image, coarse, params, backend), label)
    return cm.miou()


def prepare(model_uri: str, rows: list[dict]) -> tuple[list[tuple], dict]:
    """Decode the rows and run the network once per image."""
    model, spec = load_model(download_model(model_uri))
    examples = []
    progress = Progress("crf_search: network", len(rows), "images")
    for done, row in enumerate(rows, 1):
        image, label = decode_row(row)
        examples.append((image, predict_coarse(model, image[None])[0], label))
        progress.update(done)
    return examples, spec


def search(examples: list[tuple], num_classes: int, fixed: dict, axes: dict = AXES, points: int = 3,
           rounds: int = 2, backend: str = "pydensecrf",
           gpus: bool = False) -> tuple[dict, float, list[tuple[dict, float]]]:
    """Coarse-to-fine over `axes` with Ray tasks, one per setting (sharing a GPU with three others
    when the torch CRF runs on GPUs)."""
    on_gpu = gpus and backend == "torch"
    score_task = ray.remote(num_cpus=1, num_gpus=0.25 if on_gpu else 0)(crf_miou)
    shared = ray.put(examples)

    def score(settings: list[dict]) -> list[float]:
        log(f"crf_search: scoring {len(settings)} settings on {len(examples)} images ({backend} CRF)")
        return ray.get([score_task.remote(shared, num_classes, {**fixed, **s}, backend) for s in settings])

    return coarse_to_fine(score, axes, points, rounds)


def log_search(experiment: str, model_uri: str, best: dict, fixed: dict, miou: float, baseline: float,
               table: list[tuple[dict, float]], images: int, backend: str) -> str | None:
    try:
        experiment_id = tracking.setup(experiment)
        with mlflow.start_run(experiment_id=experiment_id, run_name="crf-search") as active:
            mlflow.log_params({"model_uri": model_uri, "images": images, "crf_backend": backend,
                               **{f"crf.{k}": v for k, v in {**fixed, **best}.items()}})
            mlflow.log_metrics({"miou_crf": miou, "miou_no_crf": baseline, "settings_evaluated": len(table)})
            buffer = io.StringIO()
            writer = csv.writer(buffer)
            writer.writerow([*AXES, "miou"])
            for setting, value in sorted(table, key=lambda t: -t[1]):
                writer.writerow([*(setting[k] for k in AXES), f"{value:.6f}"])
            with tempfile.TemporaryDirectory() as tmp:
                with open(os.path.join(tmp, "crf_search.csv"), "w") as f:
                    f.write(buffer.getvalue())
                mlflow.log_artifact(os.path.join(tmp, "crf_search.csv"))
            return active.info.run_id
    except Exception as e:
        warnings.warn(f"MLflow: CRF search not logged: {type(e).__name__}: {str(e).splitlines()[0][:200]}",
                      RuntimeWarning, stacklevel=2)
        return None


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="crf_search", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="checkpoint directory, runs:/… or models:/…")
    p.add_argument("--data", required=True, help="preprocessed Parquet dataset (local or s3://)")
    p.add_argument("--split", default="val")
    p.add_argument("--images", type=int, default=100, help="the first N images of the split (default 100)")
    p.add_argument("--points", type=int, default=3, help="grid points per axis and round (default 3)")
    p.add_argument("--rounds", type=int, default=2, help="coarse-to-fine rounds (default 2)")
    p.add_argument("--iterations", type=int, default=10, help="mean-field iterations (default 10)")
    add_crf_backend_argument(p)
    p.add_argument("--experiment", default=EXPERIMENT, help="MLflow experiment (default %(default)s)")
    args = p.parse_args(argv)
    for name in ("images", "iterations", "rounds"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.points < 2:
        p.error(f"--points must be >= 2, got {args.points}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    data = storage.absolute(args.data)
    rows = read_rows(split_files(data, load_manifest(data), args.split),
                     columns=("image_id", "image", "label", "height", "width"), limit=args.images)
    examples, spec = prepare(args.model, rows)
    init_ray(min_cpus=2)
    gpus = ray.cluster_resources().get("GPU", 0) > 0
    backend = crf_backend(args.crf_backend, gpus)
    fixed = {"pos_w": 3.0, "pos_xy_std": 3.0, "iterations": args.iterations}
    baseline = crf_miou(examples, spec["num_classes"], None)
    best, miou, table = search(examples, spec["num_classes"], fixed, AXES, args.points, args.rounds, backend, gpus)
    run_id = log_search(args.experiment, args.model, best, fixed, miou, baseline, table, len(examples), backend)
    log(f"crf_search: best {best} mIoU {miou:.4f} (no CRF {baseline:.4f}), {len(table)} settings"
        + (f"; use --crf-params runs:/{run_id}" if run_id else ""))
    emit_summary({"run_id": run_id, "best": {**fixed, **best}, "miou": miou, "miou_no_crf": baseline,
                  "crf_backend": backend,
                  "evaluated": len(table), "images": len(examples)})
    return 0


if __name__ == "__main__":
    raise SystemExit(run(main))
