"""The main job end to end on the embedded default: synthetic VOC data in the real layout, a local
Ray instance, a local MLflow store.

    python -m pipelines.demo --workdir demo_out

Stages that exist today: synth -> preprocess. Training, CRF segmentation, evaluation and the
comparison table join as they land (see the README's status table).
"""
from __future__ import annotations

import argparse
import os

from deeplab_core.data.synth import write_voc
from pipelines.cli import emit_summary, log, run
from pipelines.preprocess import preprocess


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", default="demo_out", help="where raw data, Parquet and runs go (default demo_out)")
    p.add_argument("--train", type=int, default=60, help="synthetic training images (default 60)")
    p.add_argument("--val", type=int, default=20, help="synthetic validation images (default 20)")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    raw = os.path.join(args.workdir, "raw", "voc")
    parquet = os.path.join(args.workdir, "parquet", "voc")
    log(f"demo [1/2] synth: {args.train}+{args.val} synthetic VOC images (+SBD) -> {raw}")
    write_voc(raw, args.train, args.val, seed=args.seed, size=(160, 120), sbd=True)
    log(f"demo [2/2] preprocess: Ray tasks -> Parquet shards in {parquet}")
    summary = preprocess("voc", raw, parquet, aug_copies=1, seed=args.seed)
    log("demo: train, segment + CRF, evaluate and compare are not built yet (issues #4-#6); "
        "the demo runs every stage that exists.")
    emit_summary({"stages": ["synth", "preprocess"], "preprocess": summary})
    return 0


if __name__ == "__main__":
    raise SystemExit(run(main))
