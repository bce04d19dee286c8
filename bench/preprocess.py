"""Preprocessing throughput: the Ray pipeline against a plain single-process loop.

Both run the same conversion function (`pipelines.preprocess.convert_shard`) over the same
synthetic 500x375 VOC images (300 by default) in one run. Both paths are warmed up first (imports,
Ray worker start), then each is timed `--repeats` times and the medians are compared.
Prints images/s of each and the ratio (goal on a 2-core machine: >= 1.7).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

import ray

from deeplab_core.data.layouts import find_examples
from deeplab_core.data.synth import write_voc
from pipelines import storage
from pipelines.cli import init_ray
from pipelines.preprocess import convert_shard, preprocess


def loop(raw: str, out: str, shard_size: int, aug_copies: int, limit: int | None = None) -> int:
    fs, root = storage.resolve(raw)
    examples = find_examples(fs, root, "voc", ["train"])["train"][:limit]
    for i in range(0, len(examples), shard_size):
        convert_shard(raw, examples[i:i + shard_size], os.path.join(out, f"part-{i:05d}.parquet"), aug_copies, 0)
    return len(examples)


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=300)
    p.add_argument("--shard-size", type=int, default=32)
    p.add_argument("--aug-copies", type=int, default=0)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    cpus = os.cpu_count()
    with tempfile.TemporaryDirectory() as tmp:
        raw = os.path.join(tmp, "raw")
        write_voc(raw, train=args.images, val=0, seed=0, size=(500, 375))
        init_ray(log_to_driver=False)

        def run_ray(splits=("train",)):
            preprocess("voc", raw, os.path.join(tmp, "ray"), splits=list(splits), aug_copies=args.aug_copies,
                       shard_size=args.shard_size)

        loop(raw, os.path.join(tmp, "warm"), args.shard_size, args.aug_copies, limit=2 * cpus)
        run_ray()  # warm-up: every worker has imported and run the conversion once
        loop_s = statistics.median(timed(lambda: loop(raw, os.path.join(tmp, "loop"), args.shard_size,
                                                      args.aug_copies)) for _ in range(args.repeats))
        ray_s = statistics.median(timed(run_ray) for _ in range(args.repeats))
        ray.shutdown()
    n = args.images
    result = {"images": n, "cpus": cpus, "shard_size": args.shard_size,
              "loop_images_per_s": round(n / loop_s, 1), "ray_images_per_s": round(n / ray_s, 1),
              "ratio_ray_over_loop": round(loop_s / ray_s, 2)}
    print(f"baseline single-process loop: {result['loop_images_per_s']} images/s")
    print(f"Ray tasks ({cpus} CPUs):         {result['ray_images_per_s']} images/s")
    print(f"ratio: {result['ratio_ray_over_loop']}x (goal >= 1.7)")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
