"""The main job end to end on the embedded default: synthetic VOC data in the real layout, a local
Ray instance, a local MLflow store.

    python -m pipelines.demo --workdir demo_out

synth -> preprocess (Ray tasks) -> train configs/synthetic_tiny.yaml (Ray Train) -> evaluate the
registered model on val before and after the dense CRF (Ray Data) -> segment the images with CRF
(Ray Data) -> print the experiment's comparison table from MLflow.
"""
from __future__ import annotations

import argparse
import os

from deeplab_core.data.synth import write_voc
from pipelines import compare, evaluate, segment
from pipelines.cli import emit_summary, init_ray, log, run
from pipelines.config import load_config
from pipelines.preprocess import preprocess
from pipelines.train import train

PRESET = os.path.join(os.path.dirname(__file__), "..", "configs", "synthetic_tiny.yaml")


def synthetic_voc(workdir: str, train_images: int, val_images: int, seed: int, classes: int) -> tuple[str, str, dict]:
    """Synthetic VOC 2012 + SBD at 160×120 in `workdir/raw/voc`, preprocessed into `workdir/parquet/voc`
    with one augmented copy. Returns (raw root, Parquet URI, preprocess summary)."""
    raw, parquet = os.path.join(workdir, "raw", "voc"), os.path.join(workdir, "parquet", "voc")
    log(f"synth: {train_images}+{val_images} synthetic VOC images (+SBD) -> {raw}")
    write_voc(raw, train_images, val_images, seed=seed, size=(160, 120), sbd=True, classes=classes,
              scale_range=(0.15, 0.6))
    log(f"preprocess: Ray tasks -> Parquet shards in {parquet}")
    return raw, parquet, preprocess("voc", raw, parquet, aug_copies=1, seed=seed)


def evaluate_with_crf(model_uri: str, parquet: str) -> dict:
    """Val mIoU before and after the CRF, logged onto the model's training run."""
    summary = evaluate.run_evaluation(*evaluate.parse_args(["--model", model_uri, "--data", parquet]))
    return {"miou_before_crf": summary["miou_before_crf"], "miou_after_crf": summary["miou_after_crf"]}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", default="demo_out", help="where raw data, Parquet and runs go (default demo_out)")
    p.add_argument("--train", type=int, default=60, help="synthetic training images (default 60)")
    p.add_argument("--val", type=int, default=20, help="synthetic validation images (default 20)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--classes", type=int, default=5,
                   help="VOC object classes in the synthetic data (default 5, so a CPU learns them in minutes)")
    p.add_argument("--config", default=PRESET, help="training preset (default configs/synthetic_tiny.yaml)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="training config overrides")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    parquet = os.path.join(args.workdir, "parquet", "voc")
    cfg = load_config(args.config, [f"data.uri={parquet}", f"ray.storage_path={os.path.join(args.workdir, 'runs')}",
                                    f"tracking.uri=sqlite:///{os.path.abspath(args.workdir)}/mlruns/mlflow.db",
                                    *args.set])
    # Logical CPUs (accounting, not cores): room for training + Ray Data, and for a model actor, two
    # CRF actors and the read/write tasks of segmentation.
    init_ray(min_cpus=max(cfg.ray.num_workers * cfg.ray.cpus_per_worker + 1, 5))
    log("demo [1/5] synthetic data and preprocessing")
    raw, parquet, prep = synthetic_voc(args.workdir, args.train, args.val, args.seed, args.classes)
    log(f"demo [2/5] train: {cfg.model.name}, {cfg.train.iterations} iterations on {cfg.ray.num_workers} Ray Train workers")
    result = train(cfg)
    log(f"demo [3/5] evaluate {result['model_uri']} on val, before and after the dense CRF")
    scores = evaluate_with_crf(result["model_uri"], parquet)
    images = os.path.join(raw, "VOCdevkit", "VOC2012", "JPEGImages")
    seg_out = os.path.join(args.workdir, "segment")
    log(f"demo [4/5] segment {images} with the dense CRF -> {seg_out}")
    seg_args, seg_parser = segment.parse_args(["--model", result["model_uri"], "--input", images, "--output", seg_out,
                                               "--overlays"])
    seg = segment.segment(seg_args, segment.crf_params(seg_args, seg_parser))
    log(f"demo [5/5] comparison of the runs in MLflow experiment {cfg.tracking.experiment}:")
    table = compare.compare(cfg.tracking.experiment)
    log(f"demo: val mIoU {scores['miou_before_crf']:.3f}, with CRF {scores['miou_after_crf']:.3f}; "
        f"{seg['images']} images segmented into {seg_out}")
    emit_summary({"stages": ["synth", "preprocess", "train", "evaluate", "segment", "compare"], "preprocess": prep,
                  "train": result, "evaluate": scores, "segment": seg, "compare": table["comparison_run_id"]})
    return 0


if __name__ == "__main__":
    raise SystemExit(run(main))
