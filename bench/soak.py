"""Soak: batch segmentation of 2,000 small images with the dense CRF, watching memory.

Runs `pipelines/segment.py` in-process on a local Ray instance over synthetic 160×120 JPEGs with a
21-class deeplabv3plus_mobilenetv3 (width 0.5), CRF on. A sampler thread reads the proportional set
size (PSS: shared pages split between the processes that map them, so the object store is counted
once) of the driver and every Ray process it started, once a second, and notes it when 10% and
100% of the masks are written. Prints images/s, peak memory, object-store spill, and the ratio of
memory at 100% to memory at 10% (the baseline): near 1.0 means memory stays flat over the run.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import re
import tempfile
import threading
import time
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import psutil

from deeplab_core.data.codec import encode_jpeg
from deeplab_core.data.synth import render_scene
from _common import save_voc_model  # bench/ is the running script's directory
from pipelines import segment


def make_inputs(directory: Path, n: int, width: int, height: int) -> None:
    for i in range(n):
        image, _, _ = render_scene(np.random.default_rng([17, i]), height, width, range(1, 21))
        path = directory / f"{i // 100:02d}" / f"img_{i:05d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(encode_jpeg(image))


def tree_pss_mb() -> float:
    """PSS of this process and all its descendants (the local Ray instance's processes)."""
    total = 0
    me = psutil.Process()
    for p in [me, *me.children(recursive=True)]:
        try:
            total += p.memory_full_info().pss
        except psutil.Error:
            pass
    return total / 2**20


class Sampler(threading.Thread):
    def __init__(self, masks: Path, total: int):
        super().__init__(daemon=True)
        self.masks, self.total = masks, total
        self.samples: list[tuple[float, int, float]] = []  # (time, masks written, PSS MB)
        self.done = threading.Event()

    def written(self) -> int:
        return sum(1 for _ in self.masks.rglob("*.png")) if self.masks.exists() else 0

    def run(self) -> None:
        start = time.monotonic()
        while not self.done.wait(1.0):
            self.samples.append((time.monotonic() - start, self.written(), tree_pss_mb()))

    def at(self, fraction: float) -> tuple[float, int, float]:
        """The first sample at or past `fraction` of the images."""
        return next(s for s in self.samples if s[1] >= fraction * self.total)


def spilled_mb() -> float:
    import ray
    from ray._private.internal_api import memory_summary

    # The address given: without it Ray looks for a cluster in RAY_ADDRESS or /tmp/ray, not this one.
    summary = memory_summary(address=ray.get_runtime_context().gcs_address, stats_only=True)
    found = re.search(r"Spilled ([\d.]+) MiB", summary)
    return float(found.group(1)) if found else 0.0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=2000)
    p.add_argument("--size", default="160x120", help="WIDTHxHEIGHT of the synthetic images")
    p.add_argument("--crf-actors", type=int, default=os.cpu_count())
    args = p.parse_args()
    width, height = map(int, args.size.split("x"))
    work = Path(tempfile.mkdtemp(prefix="bench-soak-"))
    model_dir = save_voc_model(work / "model")
    make_inputs(work / "images", args.images, width, height)
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{work / 'mlflow.db'}")

    sampler = Sampler(work / "out" / "masks", args.images)
    sampler.start()
    start = time.perf_counter()
    with redirect_stdout(io.StringIO()) as out:
        code = segment.main(["--model", str(model_dir), "--input", str(work / "images"), "--output",
                             str(work / "out"), "--crf-actors", str(args.crf_actors)])
    elapsed = time.perf_counter() - start
    spill = spilled_mb()
    sampler.done.set()
    sampler.join()
    summary = json.loads(out.getvalue().strip().splitlines()[-1])
    assert code == 0 and summary["images"] == args.images and summary["errors"] == 0, summary
    _, _, at10 = sampler.at(0.10)
    _, _, at100 = sampler.at(1.0)
    peak = max(s[2] for s in sampler.samples)
    print(f"{args.images} images {width}x{height} with CRF: {args.images / elapsed:.2f} images/s "
          f"({elapsed:.0f} s, Ray start included)")
    print(f"memory (PSS of driver + Ray processes): {at10:.0f} MB at 10%, {at100:.0f} MB at 100%, peak {peak:.0f} MB; "
          f"ratio 100%/10% (baseline: the 10% mark) {at100 / at10:.2f}")
    print(f"object store spilled: {spill:.1f} MiB")
    print(json.dumps({"images": args.images, "images_per_s": round(args.images / elapsed, 3),
                      "pss_mb_at_10pct": round(at10), "pss_mb_at_100pct": round(at100), "pss_mb_peak": round(peak),
                      "ratio_100_to_10": round(at100 / at10, 3), "spilled_mib": spill,
                      "samples": [(round(t), n, round(m)) for t, n, m in sampler.samples[:: max(1, len(sampler.samples) // 20)]]}))


if __name__ == "__main__":
    main()
