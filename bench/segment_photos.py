"""A bucket of phone photos through `segment`: the model's training scale against native size.

Writes --photos synthetic 4000×3000 photos (every other one stored sideways with EXIF orientation 6,
every third one as HEIC), and a 21-class deeplabv3plus_mobilenetv3 (width 0.5, random weights) whose
model.json records VOC's training scale (trained_long_side 500). Segments the bucket, with the CRF,
once with `--scale auto` (the network sees 500×375) and once with `--scale native` (the baseline:
what segment did before it knew the model's scale; both with the CRF bounded by --crf-max-pixels).
Prints images/s and the peak RSS of the whole process tree (driver and Ray workers, sampled every
0.2 s) of each, and their ratio. Each run is its own process with its own local Ray.

Then one 10,000×10,000 photo (100 Mpx) at native scale, tiled (1024-pixel windows overlapping by 256;
the CRF at its default bound, 500,000 pixels, smaller than a tile, so on the whole frame): seconds, the peak RSS of the largest single process and of the tree, against the
baseline of the untiled path's full-size 21×H×W float32 scores alone (8.4 GB). --skip-tiled leaves
it out.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
from PIL import Image

from deeplab_core.data.synth import render_scene
from deeplab_core.data.photos import HEIF
from _common import save_voc_model  # bench/ is the running script's directory


def write_photos(directory: Path, n: int) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    small, _, _ = render_scene(np.random.default_rng(7), 375, 500, range(1, 21))
    shown = np.array(Image.fromarray(small).resize((4000, 3000), Image.BILINEAR))  # a 12 Mpx scene
    for i in range(n):
        pixels = np.roll(shown, 97 * i, axis=1)
        exif = Image.Exif()
        if i % 2:  # stored sideways, as a phone held upright stores it
            pixels, exif[0x0112] = np.ascontiguousarray(np.rot90(pixels, 1)), 6
        heic = HEIF and i % 3 == 2
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, format="HEIF" if heic else "JPEG", quality=90, exif=exif)
        (directory / f"IMG_{i:04d}.{'heic' if heic else 'jpg'}").write_bytes(buf.getvalue())


def write_large_photo(path: Path, side: int) -> None:
    """A side×side JPEG of a synthetic scene (an aerial tile or a gigapixel scan's size)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    small, _, _ = render_scene(np.random.default_rng(11), 500, 500, range(1, 21))
    Image.fromarray(small).resize((side, side), Image.BILINEAR).save(path, quality=90)


def process_rss(proc: psutil.Process) -> list[int]:
    """RSS of `proc` and each of its descendants."""
    sizes = []
    for p in [proc, *proc.children(recursive=True)]:
        try:
            sizes.append(p.memory_info().rss)
        except psutil.Error:
            pass
    return sizes


def run_segment(model: Path, photos: Path, out: Path, scale: str, env: dict, *flags: str) -> dict:
    argv = [sys.executable, "-m", "pipelines.segment", "--model", str(model), "--input", str(photos),
            "--output", str(out), "--scale", scale, "--crf-actors", "1", "--batch-size", "1", *flags]
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    peak = largest = 0
    watched = psutil.Process(proc.pid)

    def sample():
        nonlocal peak, largest
        while proc.poll() is None:
            sizes = process_rss(watched)
            peak, largest = max(peak, sum(sizes)), max([largest, *sizes])
            time.sleep(0.2)
    sampler = threading.Thread(target=sample)
    sampler.start()
    stdout, _ = proc.communicate()
    sampler.join()
    elapsed = time.perf_counter() - start
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert proc.returncode == 0 and summary["errors"] == 0, summary
    return {"images_per_s": summary["images"] / elapsed, "seconds": elapsed, "peak_rss_gb": peak / 1e9,
            "largest_process_gb": largest / 1e9}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--photos", type=int, default=4)
    p.add_argument("--skip-tiled", action="store_true", help="leave out the 10,000×10,000 tiled photo")
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-photos-"))
    model = save_voc_model(work / "model")
    spec = json.loads((model / "model.json").read_text())
    (model / "model.json").write_text(json.dumps({**spec, "trained_long_side": 500}))
    write_photos(work / "photos", args.photos)
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}",
           "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    results = {}
    for scale in ("auto", "native"):
        results[scale] = run_segment(model, work / "photos", work / f"out-{scale}", scale, env)
        r = results[scale]
        print(f"--scale {scale}: {args.photos} photos of 4000×3000 in {r['seconds']:.1f} s, "
              f"{r['images_per_s']:.3f} images/s, peak RSS {r['peak_rss_gb']:.2f} GB", flush=True)
    ratio = results["auto"]["images_per_s"] / results["native"]["images_per_s"]
    print(f"ratio --scale auto / --scale native (baseline): {ratio:.2f}x images/s, peak RSS "
          f"{results['auto']['peak_rss_gb']:.2f} vs {results['native']['peak_rss_gb']:.2f} GB")
    figures = {"photos": args.photos, "ratio": round(ratio, 2),
               **{f"{k}_{m}": round(v[m], 3) for k, v in results.items() for m in ("images_per_s", "peak_rss_gb")}}
    if not args.skip_tiled:
        write_large_photo(work / "large" / "aerial.jpg", 10_000)
        r = run_segment(model, work / "large", work / "out-tiled", "native", env, "--tile", "1024")
        full_scores_gb = 21 * 10_000 * 10_000 * 4 / 1e9
        print(f"one 10,000×10,000 photo, native scale, tiled 1024/256, CRF on (at --crf-max-pixels): {r['seconds']:.0f} s, "
              f"peak RSS {r['largest_process_gb']:.2f} GB in the largest process, {r['peak_rss_gb']:.2f} GB for the "
              f"tree; baseline: the untiled path's 21×H×W float32 scores alone, {full_scores_gb:.1f} GB "
              f"(ratio {r['largest_process_gb'] / full_scores_gb:.2f})", flush=True)
        figures.update({"tiled_seconds": round(r["seconds"], 1), "tiled_largest_process_gb": round(r["largest_process_gb"], 2),
                        "tiled_tree_gb": round(r["peak_rss_gb"], 2)})
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
