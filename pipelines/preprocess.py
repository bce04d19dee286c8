"""Shard a raw PASCAL VOC 2012 (+SBD), Cityscapes, PASCAL-Context, PASCAL-Person-Part or MS-COCO
tree into Parquet with Ray tasks.

    python pipelines/preprocess.py --dataset voc --root data/raw --out data/parquet [--aug-copies 2]
    python pipelines/preprocess.py --dataset pascal_context --root data/raw/context --out data/parquet/context
    python pipelines/preprocess.py --dataset coco --coco-labels voc --root data/raw/coco --out data/parquet/coco

Writes OUT/<split>/part-XXXXX.parquet, OUT/manifest.json and OUT/errors.jsonl (DESIGN.md).
Shards are staged under OUT/_staging-*/ and moved into place only when every task has succeeded;
manifest.json is written last, so a dataset without one is incomplete and is never read.
"""
from __future__ import annotations

import argparse
import json
import time
import uuid

import pyarrow as pa
import pyarrow.parquet as pq
import ray

import deeplab_core
from deeplab_core.data.labels import label_set
from deeplab_core.data.layouts import COCO_LABELS, DATASETS, find_examples, shard_table

from pipelines import storage
from pipelines.cli import Progress, emit_summary, init_ray, log, run
from pipelines.datasets import MANIFEST, read_manifest

ERRORS = "errors.jsonl"
STAGING = "_staging-"


def parquet_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="snappy")
    return sink.getvalue().to_pybytes()


def convert_shard(root: str, examples, target: str, aug_copies: int, seed: int) -> dict:
    """Convert one shard and write it to `target`; the unit of work of a Ray task (and of the bench's
    single-process baseline)."""
    fs, _ = storage.resolve(root)
    with storage.reading(root):  # the store down is not bad data: the task fails, the run stops
        table, errors = shard_table(fs, examples, aug_copies, seed)
    if table is not None:
        storage.write_bytes(target, parquet_bytes(table))
    return {"target": target if table is not None else None, "rows": 0 if table is None else table.num_rows,
            "examples": len(examples) - len(errors), "errors": errors}


def drain(refs: list) -> None:
    """Cancel the other tasks after one failed, and take their results, so that Ray does not print
    each of their errors (echoes of the first, e.g. the same store down) as unhandled."""
    for ref in refs:
        ray.cancel(ref)
    for ref in refs:
        try:
            ray.get(ref)
        except Exception:
            pass


def commit(out: str, splits: dict[str, list[dict]], manifest: dict, errors: list[dict]) -> None:
    """Replace the dataset at `out` whole: drop the manifest first (the dataset is then 'incomplete'
    to readers), clear every old split, move the staged shards in, then write the new manifest."""
    old = read_manifest(out) or {}
    storage.delete(storage.join(out, MANIFEST))
    for split in set(old.get("splits", {})) | set(splits):
        storage.delete(storage.join(out, split))
    for split, results in splits.items():
        for result in results:
            storage.move(result["target"], storage.join(out, split, result["name"]))
    storage.write_bytes(storage.join(out, ERRORS), "".join(json.dumps(e) + "\n" for e in errors).encode())
    storage.write_bytes(storage.join(out, MANIFEST), json.dumps(manifest, indent=1).encode())
    for stale in storage.list_dirs(out):  # ours, and any left by a run that crashed before its commit
        if stale.rstrip("/").rsplit("/", 1)[-1].startswith(STAGING):
            storage.delete(stale)


def preprocess(dataset: str, root: str, out: str, splits=None, aug_copies: int = 0, seed: int = 0,
               shard_size: int = 32, coco_labels: str = "voc") -> dict:
    if aug_copies < 0 or shard_size < 1:
        raise ValueError("--aug-copies must be >= 0 and --shard-size >= 1")
    storage.check_writable(out)
    fs, root_path = storage.resolve(root)
    with storage.reading(root):
        examples = find_examples(fs, root_path, dataset, splits, log, coco_labels)
    staging = storage.join(out, f"{STAGING}{uuid.uuid4().hex[:12]}")
    jobs = []
    for split, items in examples.items():
        for index, start in enumerate(range(0, len(items), shard_size)):
            name = f"part-{index:05d}.parquet"
            jobs.append((split, name, items[start:start + shard_size], storage.join(staging, split, name)))
    total = sum(len(v) for v in examples.values())
    log(f"preprocess: {total} examples in {len(jobs)} shards from {root} "
        f"({', '.join(f'{k}={len(v)}' for k, v in examples.items())})")

    init_ray()
    task = ray.remote(num_cpus=1, max_retries=2)(convert_shard)
    pending = {task.remote(root, items, target, aug_copies, seed): (split, name) for split, name, items, target in jobs}
    results: dict[str, list[dict]] = {split: [] for split in examples}
    errors: list[dict] = []
    progress = Progress("preprocess", total, "images")
    done = 0
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1, timeout=2.0)
        for ref in ready:
            split, name = pending.pop(ref)
            try:
                result = ray.get(ref)
            except Exception:
                drain(list(pending))
                raise
            errors.extend(result["errors"])
            done += result["examples"] + len(result["errors"])
            if result["target"]:
                results[split].append(dict(result, name=name))
        progress.update(done, f"{len(errors)} errors", force=not pending)

    for split in results:  # renumber densely: a shard with only bad examples writes no file
        results[split].sort(key=lambda r: r["name"])
        for index, result in enumerate(results[split]):
            result["name"] = f"part-{index:05d}.parquet"
    labels = label_set("coco_voc" if dataset == "coco" and coco_labels == "voc" else dataset)
    manifest = {**labels.to_dict(),
                "splits": {s: {"rows": sum(r["rows"] for r in rs), "examples": sum(r["examples"] for r in rs),
                               "files": [f"{s}/{r['name']}" for r in rs]} for s, rs in results.items()},
                "errors": len(errors), "aug_copies": aug_copies, "seed": seed, "source": root,
                "writer": {"name": "deeplab-ray preprocess", "version": deeplab_core.__version__},
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    commit(out, results, manifest, errors)
    return {"out": out, "rows": {s: v["rows"] for s, v in manifest["splits"].items()}, "errors": len(errors)}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="preprocess", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", required=True, choices=DATASETS, help="layout of the raw tree")
    p.add_argument("--root", required=True,
                   help="raw tree, local dir or s3://bucket/prefix (VOC: the folder holding VOCdevkit/ and, "
                        "optionally, SBD's benchmark_RELEASE/; Cityscapes: the folder holding leftImg8bit/ and gtFine/; "
                        "PASCAL-Context / Person-Part: the folder holding VOCdevkit/VOC2010 and the labels; "
                        "COCO: the folder holding annotations/ and the image folders)")
    p.add_argument("--out", required=True, help="output dataset, local dir or s3://bucket/prefix; replaced whole")
    p.add_argument("--splits", help="comma-separated splits (default: VOC train,val[,train_aug if SBD]; "
                                    "Cityscapes, PASCAL-Context, Person-Part train,val; COCO every "
                                    "annotations/instances_<split>.json, e.g. train2017,val2017)")
    p.add_argument("--aug-copies", type=int, default=0,
                   help="random-rescale (0.5-1.5) + flip copies materialised per train image (default 0)")
    p.add_argument("--seed", type=int, default=0, help="seed of the augmentation copies (default 0)")
    p.add_argument("--shard-size", type=int, default=32, help="examples per Parquet shard / Ray task (default 32)")
    p.add_argument("--coco-labels", default="voc", choices=COCO_LABELS,
                   help="coco only: voc = the 20 VOC categories, the rest background (DeepLab's COCO "
                        "pre-training, default); all = the 80 categories")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    summary = preprocess(args.dataset, args.root, args.out, args.splits.split(",") if args.splits else None,
                         args.aug_copies, args.seed, args.shard_size, args.coco_labels)
    log(f"preprocess: wrote {args.out} ({summary['errors']} errors, see {ERRORS})")
    emit_summary(summary)
    return 0


if __name__ == "__main__":
    raise SystemExit(run(main))
