"""The main job end to end on the embedded default: synthetic VOC data in the real layout, a local
Ray instance, a local MLflow store.

    python -m pipelines.demo --workdir demo_out

Stages that exist today: synth -> preprocess -> train (configs/synthetic_tiny.yaml). CRF
segmentation, evaluation and the comparison table join as they land (see the README's status table).
"""
from __future__ import annotations

import argparse
import os

from deeplab_core.data.synth import write_voc
from pipelines.cli import emit_summary, init_ray, log, run
from pipelines.config import load_config
from pipelines.preprocess import preprocess
from pipelines.train import train


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", default="demo_out", help="where raw data, Parquet and runs go (default demo_out)")
    p.add_argument("--train", type=int, default=60, help="synthetic training images (default 60)")
    p.add_argument("--val", type=int, default=20, help="synthetic validation images (default 20)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--classes", type=int, default=5,
                   help="VOC object classes in the synthetic data (default 5, so a CPU learns them in minutes)")
    p.add_argument("--config", default=os.path.join(os.path.dirname(__file__), "..", "configs", "synthetic_tiny.yaml"),
                   help="training preset (default configs/synthetic_tiny.yaml)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="training config overrides")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    raw = os.path.join(args.workdir, "raw", "voc")
    parquet = os.path.join(args.workdir, "parquet", "voc")
    cfg = load_config(args.config, [f"data.uri={parquet}", f"ray.storage_path={os.path.join(args.workdir, 'runs')}",
                                    f"tracking.uri=sqlite:///{os.path.abspath(args.workdir)}/mlruns/mlflow.db",
                                    *args.set])
    init_ray(min_cpus=cfg.ray.num_workers * cfg.ray.cpus_per_worker + 1)  # room for training and Ray Data
    log(f"demo [1/3] synth: {args.train}+{args.val} synthetic VOC images (+SBD) -> {raw}")
    write_voc(raw, args.train, args.val, seed=args.seed, size=(160, 120), sbd=True, classes=args.classes,
              scale_range=(0.15, 0.6))
    log(f"demo [2/3] preprocess: Ray tasks -> Parquet shards in {parquet}")
    prep = preprocess("voc", raw, parquet, aug_copies=1, seed=args.seed)
    log(f"demo [3/3] train: {cfg.model.name}, {cfg.train.iterations} iterations on {cfg.ray.num_workers} Ray Train workers")
    result = train(cfg)
    log(f"demo: val mIoU {result['val_miou']:.3f}; model {result['model_uri']}. "
        "Segment + CRF, evaluate and compare are not built yet (issues #5-#6).")
    emit_summary({"stages": ["synth", "preprocess", "train"], "preprocess": prep, "train": result})
    return 0


if __name__ == "__main__":
    raise SystemExit(run(main))
