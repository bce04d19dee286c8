"""Batch segmentation throughput: the Ray Data pipeline against a naive sequential loop.

Both segment the same synthetic 500×375 JPEGs with the same model (a 21-class
deeplabv3plus_mobilenetv3, width 0.5) and the same functions: read -> decode_image -> predict_coarse ->
label_map (upsample + dense CRF + argmax) -> palette PNG written atomically. The loop runs them one
image after the other with all cores given to torch; the pipeline overlaps decoding, the model actor
and a pool of CRF actors. Ray starts once, before the first timed run; each pipeline run starts its
actors (model load included) and redoes every image (--force). Loop and pipeline alternate for
--repeats rounds; the ratio printed is the median of the rounds' ratios (goal >= 1.5 on 2 cores).
Also prints CRF seconds/image, and the bytes per image that cross from the model stage to the CRF
stage (coarse logits) against full-size probabilities.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import tempfile
import time
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import torch

from deeplab_core.checkpoint import load_model
from deeplab_core.crf import CRFParams
from deeplab_core.data.codec import decode_image, encode_jpeg, encode_png
from deeplab_core.data.labels import VOC
from deeplab_core.data.synth import render_scene
from deeplab_core.inference import label_map, predict_coarse
from _common import save_voc_model  # bench/ is the running script's directory
from pipelines import segment, storage
from pipelines.cli import init_ray


def make_inputs(directory: Path, n: int) -> list[Path]:
    paths = []
    for i in range(n):
        image, _, _ = render_scene(np.random.default_rng([11, i]), 375, 500, range(1, 21))  # H, W: VOC's 500×375
        path = directory / f"{i // 50:02d}" / f"img_{i:04d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(encode_jpeg(image))
        paths.append(path)
    return paths


def naive_loop(model_dir: Path, paths: list[Path], out: Path) -> dict:
    model, spec = load_model(model_dir)
    palette = VOC.flat_palette()
    crf_seconds, coarse_bytes, full_bytes = 0.0, 0, 0
    start = time.perf_counter()
    for path in paths:
        image = decode_image(storage.read_bytes(str(path)))
        coarse = predict_coarse(model, image[None])[0]
        t = time.perf_counter()
        mask = label_map(image, coarse, CRFParams())
        crf_seconds += time.perf_counter() - t
        storage.write_bytes(str(out / path.parent.name / (path.stem + ".png")), encode_png(mask, palette))
        coarse_bytes += coarse.nbytes
        full_bytes += coarse.shape[0] * image.shape[0] * image.shape[1] * 4
    elapsed = time.perf_counter() - start
    return {"images_per_s": len(paths) / elapsed, "crf_s_per_image": crf_seconds / len(paths),
            "coarse_bytes_per_image": coarse_bytes / len(paths), "full_bytes_per_image": full_bytes / len(paths)}


def pipeline(model_dir: Path, images: Path, output: Path, crf_actors: int) -> float:
    """images/s of `segment` over every image under `images` (all redone)."""
    start = time.perf_counter()
    with redirect_stdout(io.StringIO()) as out:
        code = segment.main(["--model", str(model_dir), "--input", str(images), "--output", str(output),
                             "--crf-actors", str(crf_actors), "--force"])
    elapsed = time.perf_counter() - start
    summary = json.loads(out.getvalue().strip().splitlines()[-1])
    assert code == 0 and summary["errors"] == 0, summary
    return summary["images"] / elapsed


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=100)
    p.add_argument("--repeats", type=int, default=3, help="rounds of loop + pipeline; the median ratio is reported")
    p.add_argument("--crf-actors", type=int, default=os.cpu_count())
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-segment-"))
    model_dir = save_voc_model(work / "model")
    paths = make_inputs(work / "images", args.images)
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{work / 'mlflow.db'}")
    torch.set_num_threads(os.cpu_count() or 1)
    init_ray(min_cpus=1 + args.crf_actors + 1)  # what segment asks for: model actor, CRF actors, feeding

    rounds = []
    for r in range(args.repeats):
        loop = naive_loop(model_dir, paths, work / "loop_masks")
        ours = pipeline(model_dir, work / "images", work / "pipeline", args.crf_actors)
        rounds.append({"loop": loop["images_per_s"], "pipeline": ours, "ratio": ours / loop["images_per_s"]})
        print(f"round {r + 1}: naive loop {loop['images_per_s']:.2f} images/s (CRF {loop['crf_s_per_image']:.3f} "
              f"s/image), Ray Data pipeline (1 model actor, {args.crf_actors} CRF actors) {ours:.2f} images/s, "
              f"ratio {rounds[-1]['ratio']:.2f}", flush=True)
    ratio = statistics.median(r["ratio"] for r in rounds)
    print(f"ratio pipeline / naive loop: median {ratio:.2f} of {[round(r['ratio'], 2) for r in rounds]} "
          f"(goal >= 1.5)")
    print(f"model -> CRF stage traffic: {loop['coarse_bytes_per_image'] / 1e6:.3f} MB/image as coarse logits vs "
          f"{loop['full_bytes_per_image'] / 1e6:.2f} MB/image as full-size probabilities "
          f"({loop['full_bytes_per_image'] / loop['coarse_bytes_per_image']:.0f}x less)")
    print(json.dumps({"images": args.images, "repeats": args.repeats,
                      "loop_images_per_s": round(statistics.median(r["loop"] for r in rounds), 3),
                      "pipeline_images_per_s": round(statistics.median(r["pipeline"] for r in rounds), 3),
                      "ratio": round(ratio, 3), "ratios": [round(r["ratio"], 3) for r in rounds],
                      "crf_s_per_image": round(loop["crf_s_per_image"], 3),
                      "coarse_mb_per_image": round(loop["coarse_bytes_per_image"] / 1e6, 4),
                      "full_probabilities_mb_per_image": round(loop["full_bytes_per_image"] / 1e6, 3)}))


if __name__ == "__main__":
    main()
