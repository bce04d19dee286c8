"""Evaluate semantic segmentation: mIoU, per-class IoU, pixel and mean accuracy, and trimap IoU
around object boundaries (band widths 1-40, plotted).

Two modes:

    # a model on a preprocessed Parquet split, with Ray Data; before and after the dense CRF in one pass
    python pipelines/evaluate.py --model models:/deeplab-voc/3 --data data/parquet/voc --split val

    # a folder of prediction PNGs (named by image id) against a raw ground-truth tree
    python pipelines/evaluate.py --dataset voc --gt-root data/raw/voc --split val --pred out/masks
    python pipelines/evaluate.py --dataset cityscapes --gt-root data/raw/cs --split val --pred out/masks
    python pipelines/evaluate.py --dataset pascal_context --gt-root data/raw/context --split val --pred out/masks

VOC predictions hold train ids (palette or grey PNG); Cityscapes predictions hold labelIds, as the
official evaluation expects (`segment.py --cityscapes-label-ids` writes them). Results are logged
to MLflow: onto the model's training run when --model names one (runs:/, models:/), else as a new
run in --experiment. The last stdout line is the JSON summary (miou, per_class_iou, ...).
"""
from __future__ import annotations

import argparse
import json
import os
import posixpath
import tempfile
import warnings

import numpy as np

from deeplab_core.checkpoint import load_model
from deeplab_core.data.codec import decode_label, decode_row
from deeplab_core.data.labels import cityscapes_to_train_ids, label_set
from deeplab_core.data.layouts import DATASETS, find_examples, load_label
from deeplab_core.evaluation import SegmentationScores
from deeplab_core.inference import label_map, predict_coarse
from pipelines import storage, tracking
from pipelines.cli import Progress, emit_summary, fit_actors, init_ray, log, run
from pipelines.datasets import load_manifest, split_files
from pipelines.model_uri import download_model, model_run_id
from pipelines.reports import trimap_plot
from pipelines.segment import add_crf_arguments, crf_backend, crf_params

EXPERIMENT = "evaluation"


class ScoreStage:
    """Ray Data actor: Parquet rows -> the summed scores of this batch, without and with the CRF. On
    a GPU when the actor has one (model and torch CRF)."""

    def __init__(self, model_dir: str, crf: dict | None, crf_backend: str = "pydensecrf", threads: int = 1):
        import torch

        from deeplab_core.crf import CRFParams

        torch.set_num_threads(threads)
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model, self.spec = load_model(model_dir, map_location=self.device)
        self.model.to(self.device)
        self.crf = CRFParams(**crf) if crf else None
        self.crf_backend = crf_backend

    def __call__(self, batch: dict) -> dict:
        before = SegmentationScores(self.spec["num_classes"])
        after = SegmentationScores(self.spec["num_classes"])
        for row in zip(*(batch[k] for k in ("image_id", "image", "label", "height", "width"))):
            image, label = decode_row(dict(zip(("image_id", "image", "label", "height", "width"), row)))
            coarse = predict_coarse(self.model, image[None], self.device)[0]
            before.update(label_map(image, coarse), label)
            if self.crf is not None:
                after.update(label_map(image, coarse, self.crf, self.crf_backend), label)
        return {f"{name}_{k}": [v] for name, scores in (("before", before), ("after", after))
                for k, v in scores.to_arrays().items()} | {"images": [len(batch["image_id"])]}


def evaluate_model(args, crf: dict | None) -> tuple[dict, dict[str, SegmentationScores]]:
    import ray

    model_dir = download_model(args.model)
    _, spec = load_model(model_dir)
    data = storage.absolute(args.data)
    manifest = load_manifest(data)
    if manifest["num_classes"] != spec["num_classes"]:
        raise ValueError(f"model {args.model} predicts {spec['num_classes']} classes, dataset {args.data} has "
                         f"{manifest['num_classes']}")
    files = split_files(data, manifest, args.split)
    init_ray(min_cpus=args.actors + 1)
    ray.data.DataContext.get_current().enable_progress_bars = False
    fs, _ = storage.resolve(files[0])
    ds = ray.data.read_parquet([storage.resolve(f)[1] for f in files], filesystem=fs,
                               columns=["image_id", "image", "label", "height", "width"])
    if args.limit:
        ds = ds.limit(args.limit)
    total = min(args.limit or manifest["splits"][args.split]["rows"], manifest["splits"][args.split]["rows"])
    gpus = int(ray.cluster_resources().get("GPU", 0))
    backend = crf_backend(args.crf_backend, gpus > 0)
    batch = 4
    actors = fit_actors(args.actors, 1, "evaluate", batches=-(-total // batch))
    ds = ds.map_batches(ScoreStage, fn_constructor_kwargs={"model_dir": model_dir, "crf": crf, "crf_backend": backend},
                        batch_size=batch, num_cpus=1, num_gpus=1 if gpus else 0,
                        # one GPU per actor: as many actors as GPUs at most
                        compute=ray.data.ActorPoolStrategy(size=min(actors, gpus) if gpus else actors))
    before = after = SegmentationScores(spec["num_classes"])
    progress, done = Progress("evaluate", total, "images"), 0
    for row in ds.iter_rows():
        before = before + SegmentationScores.from_arrays({"confusion": row["before_confusion"],
                                                          "trimap": row["before_trimap"]})
        after = after + SegmentationScores.from_arrays({"confusion": row["after_confusion"],
                                                        "trimap": row["after_trimap"]})
        done += row["images"]
        progress.update(done)
    scores = {"before_crf": before, **({"after_crf": after} if crf else {})}
    return {"images": done, "classes": spec["classes"], **({"crf_backend": backend} if crf else {})}, scores


def _prediction_index(pred: str, dataset: str) -> dict[str, str]:
    """image id -> prediction file; Cityscapes files may keep the `_leftImg8bit` suffix."""
    index = {}
    for path in storage.list_files(pred, (".png",)):
        stem = posixpath.splitext(posixpath.basename(path))[0]
        if dataset == "cityscapes":
            stem = stem.removesuffix("_leftImg8bit")
        index[stem] = path
    return index


def evaluate_predictions(args) -> tuple[dict, dict[str, SegmentationScores]]:
    labels = label_set(args.dataset)
    fs, root = storage.resolve(storage.absolute(args.gt_root))
    examples = find_examples(fs, root, args.dataset, [args.split])[args.split]
    if not examples:
        raise ValueError(f"{args.gt_root}: split {args.split!r} has no images")
    pred = storage.absolute(args.pred)
    if not storage.exists(pred):
        raise storage.StorageError(f"{args.pred}: predictions folder not found")
    index = _prediction_index(pred, args.dataset)
    scores = SegmentationScores(labels.num_classes)
    progress = Progress("evaluate", len(examples), "images")
    for done, example in enumerate(examples, 1):
        path = index.get(example.image_id)
        if path is None:
            raise FileNotFoundError(f"{args.pred}: no prediction for {example.image_id} (expected "
                                    f"{example.image_id}.png)")
        prediction = decode_label(storage.read_bytes(path))
        if args.dataset == "cityscapes":
            prediction = cityscapes_to_train_ids(prediction)
        target = load_label(fs, example)
        if prediction.shape != target.shape:
            raise ValueError(f"{path}: prediction is {prediction.shape[1]}x{prediction.shape[0]} but the ground "
                             f"truth {example.label} is {target.shape[1]}x{target.shape[0]}")
        scores.update(prediction, target)
        progress.update(done)
    return {"images": len(examples), "classes": list(labels.classes)}, {"before_crf": scores}


def summarize(info: dict, scores: dict[str, SegmentationScores]) -> dict:
    """The headline numbers are the last stage's (after CRF when it ran); each stage in full too."""
    stages = {name: s.summary(info["classes"]) for name, s in scores.items()}
    final = stages.get("after_crf", stages["before_crf"])
    out = {**final, "images": info["images"], "stages": stages,
           "miou_before_crf": stages["before_crf"]["miou"]}
    if "after_crf" in stages:
        out["miou_after_crf"] = stages["after_crf"]["miou"]
        out["crf_backend"] = info["crf_backend"]
    return out


def log_to_mlflow(args, summary: dict, crf: dict | None) -> str | None:
    """Metrics eval_* (per stage), the trimap curve (metric with step = band width, and a plot), the
    JSON summary. An unreachable tracking server costs a warning, not the evaluation."""
    import mlflow

    try:
        run_id = model_run_id(args.model) if getattr(args, "model", None) else None
        if run_id is None:
            experiment_id = tracking.setup(args.experiment)
            run_id = mlflow.start_run(experiment_id=experiment_id, run_name=f"evaluate-{args.split}").info.run_id
            mlflow.end_run()
        else:
            tracking.setup(args.experiment)  # the store, from MLFLOW_TRACKING_URI
        client = mlflow.tracking.MlflowClient()
        metrics = {}
        for stage, s in summary["stages"].items():
            suffix = "" if stage == "before_crf" else "_crf"
            metrics.update({f"eval_miou{suffix}": s["miou"], f"eval_pixel_accuracy{suffix}": s["pixel_accuracy"],
                            f"eval_mean_accuracy{suffix}": s["mean_accuracy"]})
            metrics.update({f"eval_iou{suffix}_{name.replace(' ', '_')}": v
                            for name, v in s["per_class_iou"].items() if v is not None})
            for width, v in s["trimap_miou"].items():
                if v is not None:
                    client.log_metric(run_id, f"eval_trimap_miou{suffix}", v, step=int(width))
        client.log_batch(run_id, metrics=[mlflow.entities.Metric(k, float(v), 0, 0) for k, v in metrics.items()
                                          if v is not None and np.isfinite(v)])
        client.set_tag(run_id, "eval.split", args.split)
        if crf:
            client.set_tag(run_id, "eval.crf", json.dumps(crf, sort_keys=True))
            client.set_tag(run_id, "eval.crf_backend", summary["crf_backend"])
        with tempfile.TemporaryDirectory() as tmp:
            trimap_plot({stage: s["trimap_miou"] for stage, s in summary["stages"].items()},
                        os.path.join(tmp, "trimap.png"))
            with open(os.path.join(tmp, "evaluation.json"), "w") as f:
                json.dump(summary, f, indent=1)
            client.log_artifacts(run_id, tmp, f"evaluation/{args.split}")
        return run_id
    except Exception as e:
        warnings.warn(f"MLflow: evaluation not logged: {type(e).__name__}: {str(e).splitlines()[0][:200]}",
                      RuntimeWarning, stacklevel=2)
        return None


def parse_args(argv=None) -> tuple[argparse.Namespace, argparse.ArgumentParser]:
    p = argparse.ArgumentParser(prog="evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--split", default="val", help="split to evaluate (default val)")
    model = p.add_argument_group("a model on a Parquet split")
    model.add_argument("--model", help="checkpoint directory, runs:/… or models:/…")
    model.add_argument("--data", help="preprocessed Parquet dataset (local or s3://)")
    model.add_argument("--limit", type=int, help="only the first N images of the split")
    model.add_argument("--actors", type=int, default=os.cpu_count() or 1, help="Ray Data actors (one CPU each)")
    add_crf_arguments(p)
    pred = p.add_argument_group("a folder of predictions against a raw ground-truth tree")
    pred.add_argument("--dataset", choices=DATASETS)
    pred.add_argument("--gt-root", help="the raw dataset root (VOC: holds VOCdevkit/; Cityscapes: gtFine/)")
    pred.add_argument("--pred", help="folder or s3:// prefix of <image id>.png predictions (searched recursively)")
    p.add_argument("--experiment", default=EXPERIMENT,
                   help="MLflow experiment for runs not tied to a training run (default %(default)s)")
    args = p.parse_args(argv)
    if bool(args.model) == bool(args.pred):
        p.error("give either --model and --data, or --dataset, --gt-root and --pred")
    missing = [f"--{n}" for n in (("data",) if args.model else ("dataset", "gt_root"))
               if not getattr(args, n)]
    if missing:
        p.error(f"missing {', '.join(m.replace('_', '-') for m in missing)}")
    if args.limit is not None and args.limit < 1:
        p.error(f"--limit must be >= 1, got {args.limit}")
    return args, p


def run_evaluation(args, parser) -> dict:
    """Evaluate (either mode), log to MLflow, return the summary."""
    if args.model:
        crf = crf_params(args, parser)
        info, scores = evaluate_model(args, crf)
    else:
        crf = None
        info, scores = evaluate_predictions(args)
    summary = summarize(info, scores)
    summary["mlflow_run_id"] = log_to_mlflow(args, summary, crf)
    return summary


def main(argv=None) -> int:
    summary = run_evaluation(*parse_args(argv))
    stages = ", ".join(f"{name} {s['miou']:.4f}" for name, s in summary["stages"].items())
    log(f"evaluate: {summary['images']} images, mIoU {stages}")
    emit_summary(summary)
    return 0


if __name__ == "__main__":
    raise SystemExit(run(main))
