"""Write a synthetic dataset in the exact on-disk layout of PASCAL VOC 2012 (+SBD), Cityscapes,
PASCAL-Context (the original release or mmsegmentation's conversion) or PASCAL-Person-Part.

    python pipelines/synth.py --dataset voc --out data/raw --train 40 --val 20 --seed 0 [--sbd]
    python pipelines/synth.py --dataset pascal_context --out data/raw/context --context-layout both
    python pipelines/synth.py --dataset pascal_person_part --out data/raw/parts --part-lists paths
    python pipelines/synth.py --dataset coco --out data/raw/coco --coco-year 2017

The trees are read by torchvision's VOCSegmentation / Cityscapes as they read the real releases.
Scenes: objects of several classes with class-dependent shape, colour and stripe texture, at
~5%..60% of the image side, over cluttered backgrounds; VOC labels carry the 255 void band on object
borders. Deterministic given --seed.
"""
from __future__ import annotations

import argparse

from deeplab_core.data.synth import (write_cityscapes, write_coco, write_pascal_context, write_pascal_person_part,
                                     write_voc)
from pipelines.cli import emit_summary, log, run


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be WIDTHxHEIGHT, e.g. 500x375, got {text!r}") from None
    if w < 8 or h < 8:
        raise argparse.ArgumentTypeError(f"size must be at least 8x8, got {text!r}")
    return w, h


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="synth", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", required=True,
                   choices=("voc", "cityscapes", "pascal_context", "pascal_person_part", "coco"))
    p.add_argument("--out", required=True, help="local directory to write the tree into")
    p.add_argument("--train", type=int, default=40, help="training images (default 40)")
    p.add_argument("--val", type=int, default=20, help="validation images (default 20)")
    p.add_argument("--seed", type=int, default=0, help="random seed; same seed, same bytes (default 0)")
    p.add_argument("--size", type=_size, help="WIDTHxHEIGHT (default: Cityscapes 2048x1024, COCO 320x240, others 500x375)")
    p.add_argument("--sbd", action="store_true", help="VOC only: also write an SBD benchmark_RELEASE tree")
    p.add_argument("--sbd-extra", type=int, help="VOC only: images only in SBD (default: as many as --train)")
    p.add_argument("--classes", type=int, default=20, help="VOC only: object classes that appear, 1..20 (default 20)")
    p.add_argument("--min-scale", type=float, default=0.05,
                   help="VOC only: smallest object side / image short side (default 0.05; largest is 0.6)")
    p.add_argument("--context-layout", default="original", choices=("original", "mmseg", "both"),
                   help="pascal_context only: the release's trainval/*.mat, mmsegmentation's PNGs, or both")
    p.add_argument("--context-classes", type=int, default=6,
                   help="pascal_context only: how many of the 59 classes appear (default 6)")
    p.add_argument("--part-lists", default="ids", choices=("ids", "paths"),
                   help="pascal_person_part only: splits as {train,val}_id.txt or as {train,val}.txt path lines")
    p.add_argument("--coco-year", type=int, default=2017, choices=(2014, 2017),
                   help="coco only: the release's naming (default 2017)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if min(args.train, args.val) < 0:
        raise ValueError("--train and --val must be >= 0")
    log(f"synth: writing {args.train}+{args.val} {args.dataset} images to {args.out}")
    if args.dataset == "voc":
        layout = write_voc(args.out, args.train, args.val, args.seed, args.size or (500, 375), args.sbd, args.sbd_extra,
                           args.classes, (args.min_scale, 0.6))
        layout = {k: v for k, v in layout.items() if k != "voc"}  # split -> ids (with sbd_train, sbd_val)
    elif args.dataset == "cityscapes":
        layout = write_cityscapes(args.out, args.train, args.val, args.seed, args.size or (2048, 1024))
    elif args.dataset == "pascal_context":
        if not 1 <= args.context_classes <= 59:
            raise ValueError(f"--context-classes must be 1..59, got {args.context_classes}")
        layout = write_pascal_context(args.out, args.train, args.val, args.seed, args.size or (500, 375),
                                      args.context_layout, args.context_classes)
    elif args.dataset == "pascal_person_part":
        layout = write_pascal_person_part(args.out, args.train, args.val, args.seed, args.size or (500, 375),
                                          args.part_lists)
    else:
        layout = write_coco(args.out, args.train, args.val, args.seed, args.size or (320, 240), args.coco_year)
    counts = {split: len(names) for split, names in layout.items()}
    emit_summary({"dataset": args.dataset, "out": args.out, "images": counts, "seed": args.seed})
    return 0


if __name__ == "__main__":
    raise SystemExit(run(main))
