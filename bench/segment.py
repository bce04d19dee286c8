"""Batch segmentation throughput: the Ray Data pipeline against a naive sequential loop.

Both segment the same synthetic 500×375 JPEGs with the same model (a 21-class
deeplabv3plus_mobilenetv3, width 0.5) and the same functions: read -> decode_image -> predict_coarse ->
label_map (upsample + dense CRF + argmax) -> palette PNG written atomically. The loop runs them one
image after the other with all cores given to torch; the pipeline overlaps decoding, the model actor
and a pool of CRF actors. The pipeline's time includes starting Ray. Prints images/s of both, the
ratio (goal >= 1.5 on 2 cores), CRF seconds/image, and the bytes per image that cross from the model
stage to the CRF stage (coarse logits) against full-size probabilities.
"""
from __future__ import annotations

import argparse
import io
import json
import os
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


def make_inputs(directory: Path, n: int) -> list[Path]:
    paths = []
    for i in range(n):
        image, _, _ = render_scene(np.random.default_rng([11, i]), 500, 375, range(1, 21))
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=200)
    p.add_argument("--crf-actors", type=int, default=os.cpu_count())
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-segment-"))
    model_dir = save_voc_model(work / "model")
    paths = make_inputs(work / "images", args.images)

    torch.set_num_threads(os.cpu_count() or 1)
    loop = naive_loop(model_dir, paths, work / "loop_masks")
    print(f"naive loop: {loop['images_per_s']:.2f} images/s, CRF {loop['crf_s_per_image']:.3f} s/image", flush=True)

    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{work / 'mlflow.db'}")
    start = time.perf_counter()
    with redirect_stdout(io.StringIO()) as out:
        code = segment.main(["--model", str(model_dir), "--input", str(work / "images"), "--output",
                             str(work / "pipeline"), "--crf-actors", str(args.crf_actors)])
    elapsed = time.perf_counter() - start
    summary = json.loads(out.getvalue().strip().splitlines()[-1])
    assert code == 0 and summary["images"] == args.images, summary
    ours = args.images / elapsed
    ratio = ours / loop["images_per_s"]
    print(f"Ray Data pipeline (1 model actor, {args.crf_actors} CRF actors): {ours:.2f} images/s "
          f"(Ray start included), ratio {ratio:.2f} (goal >= 1.5)")
    print(f"model -> CRF stage traffic: {loop['coarse_bytes_per_image'] / 1e6:.3f} MB/image as coarse logits vs "
          f"{loop['full_bytes_per_image'] / 1e6:.2f} MB/image as full-size probabilities "
          f"({loop['full_bytes_per_image'] / loop['coarse_bytes_per_image']:.0f}x less)")
    print(json.dumps({"images": args.images, "loop_images_per_s": round(loop["images_per_s"], 3),
                      "pipeline_images_per_s": round(ours, 3), "ratio": round(ratio, 3),
                      "crf_s_per_image": round(loop["crf_s_per_image"], 3),
                      "coarse_mb_per_image": round(loop["coarse_bytes_per_image"] / 1e6, 4),
                      "full_probabilities_mb_per_image": round(loop["full_bytes_per_image"] / 1e6, 3)}))


if __name__ == "__main__":
    main()
