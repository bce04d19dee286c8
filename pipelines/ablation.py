"""A small DeepLab ablation on synthetic data: LargeFOV vs ASPP-S vs ASPP-L, step vs poly LR.

    python pipelines/ablation.py --workdir ablation_out [--heads largefov aspp_l] [--iterations 150]

Each cell trains `deeplabv2_<backbone>_<head>` from configs/synthetic_tiny.yaml with Ray Train, is
evaluated on val before and after the dense CRF with Ray Data (logged onto its training run), and
the experiment's comparison table is printed at the end (pipelines/compare.py). --data reuses a
preprocessed dataset; otherwise synthetic VOC data is written and preprocessed first.
"""
from __future__ import annotations

import argparse
import os

from pipelines import compare, evaluate
from pipelines.cli import emit_summary, init_ray, log, run
from pipelines.config import load_config
from pipelines.demo import PRESET, synthetic_voc
from pipelines.train import train

HEADS = ("largefov", "aspp_s", "aspp_l")
POLICIES = ("step", "poly")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="ablation", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", default="ablation_out", help="data, checkpoints and MLflow store (default %(default)s)")
    p.add_argument("--data", help="an existing preprocessed Parquet dataset (default: write synthetic VOC)")
    p.add_argument("--heads", nargs="+", choices=HEADS, default=list(HEADS))
    p.add_argument("--lr-policies", nargs="+", choices=POLICIES, default=list(POLICIES))
    p.add_argument("--backbone", default="mobilenetv3", choices=["mobilenetv3", "resnet50", "resnet101", "vgg16"])
    p.add_argument("--iterations", type=int, default=150, help="training iterations per cell (default 150)")
    p.add_argument("--experiment", default="deeplab-ablation", help="MLflow experiment (default %(default)s)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config overrides for every cell")
    args = p.parse_args(argv)
    if args.iterations < 1:
        p.error(f"--iterations must be >= 1, got {args.iterations}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    store = f"sqlite:///{os.path.abspath(args.workdir)}/mlruns/mlflow.db"
    os.environ.setdefault("MLFLOW_TRACKING_URI", store)
    init_ray(min_cpus=4)
    parquet = args.data or synthetic_voc(args.workdir, 60, 20, 0, 5)[1]
    cells = [(h, pol) for h in args.heads for pol in args.lr_policies]
    options = ["model.options={width_mult: 0.5}"] if args.backbone == "mobilenetv3" else ["model.options={}"]
    for n, (head, policy) in enumerate(cells, 1):
        name = f"deeplabv2_{args.backbone}_{head}"
        log(f"ablation [{n}/{len(cells)}] {name}, {policy} LR, {args.iterations} iterations")
        cfg = load_config(PRESET, [f"data.uri={parquet}", f"model.name={name}", *options,
                                   f"train.lr_policy={policy}", f"train.iterations={args.iterations}",
                                   f"train.eval_interval={args.iterations}",
                                   f"train.checkpoint_interval={args.iterations}",
                                   f"ray.storage_path={os.path.join(args.workdir, 'runs')}",
                                   f"tracking.experiment={args.experiment}", "tracking.register_model=",
                                   f"tracking.run_name={head}-{policy}-{args.iterations}", *args.set])
        result = train(cfg)
        evaluate.run_evaluation(*evaluate.parse_args(["--model", f"runs:/{result['run_id']}", "--data", parquet]))
    table = compare.compare(args.experiment)
    emit_summary({"experiment": args.experiment, "cells": len(cells), "rows": table["rows"],
                  "comparison_run_id": table["comparison_run_id"]})
    return 0


if __name__ == "__main__":
    raise SystemExit(run(main))
