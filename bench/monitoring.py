"""The cost of knowing how a night went: confidence statistics with every mask, and --confidence PNGs.

A sequential loop over synthetic 500×375 JPEGs (read, decode, the 21-class deeplabv3plus_mobilenetv3
at width 0.5, the dense CRF with pydensecrf or none, the mask PNG written) in three variants:
- baseline: the mask alone (labels by argmax, as segment made them before the confidence statistics);
- statistics: `image_masks` (labels, confidence and entropy maps) and `image_confidence` per image,
  what every summary row now carries;
- statistics + PNG: also the confidence map encoded and written (`segment --confidence`).
Variants alternate image by image, so the machine's drift hits all three alike. Prints images/s of
each and their ratios to the baseline (goals: statistics under 5% slower, with PNGs under 15%).
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from deeplab_core.checkpoint import load_model
from deeplab_core.crf import CRFParams, dense_crf
from deeplab_core.data.codec import decode_image, encode_jpeg, encode_png
from deeplab_core.data.synth import render_scene
from deeplab_core.inference import image_masks, predict_coarse
from deeplab_core.models.segmentation import upsample_logits
from deeplab_core.monitoring import image_confidence
from _common import save_voc_model  # bench/ is the running script's directory


def labels_only(image: np.ndarray, coarse: np.ndarray, crf: CRFParams | None) -> np.ndarray:
    """The baseline: upsample, softmax, the CRF, argmax; nothing else."""
    probs = upsample_logits(torch.from_numpy(coarse)[None], image.shape[:2]).softmax(1)[0]
    if crf is not None:
        return dense_crf(image, probs.numpy(), crf).argmax(0).astype(np.uint8)
    return probs.argmax(0).to(torch.uint8).numpy()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=20)
    args = p.parse_args()
    torch.set_num_threads(1)  # one segment actor's share of a core
    work = Path(tempfile.mkdtemp(prefix="bench-monitoring-"))
    model, _ = load_model(str(save_voc_model(work / "model")))
    paths = []
    for i in range(args.images):
        image, _, _ = render_scene(np.random.default_rng(i), 375, 500, range(1, 21))
        paths.append(work / f"{i:04d}.jpg")
        paths[-1].write_bytes(encode_jpeg(image))
    figures = {}
    for crf_name, crf in (("crf", CRFParams()), ("no crf", None)):
        seconds = {"baseline": 0.0, "statistics": 0.0, "statistics + PNG": 0.0}
        for path in paths:
            for variant in seconds:
                start = time.perf_counter()
                image = decode_image(path.read_bytes())
                coarse = predict_coarse(model, image[None])[0]
                if variant == "baseline":
                    mask = labels_only(image, coarse, crf)
                else:
                    masks = image_masks(image, coarse, crf)
                    mask = masks.labels
                    image_confidence(masks.confidence, masks.entropy)
                    if variant == "statistics + PNG":
                        (work / f"{path.stem}-confidence.png").write_bytes(encode_png(masks.confidence))
                (work / f"{path.stem}-mask.png").write_bytes(encode_png(mask))
                seconds[variant] += time.perf_counter() - start
        rates = {k: args.images / v for k, v in seconds.items()}
        for variant, rate in rates.items():
            print(f"{crf_name}, {variant}: {rate:.2f} images/s ({rate / rates['baseline']:.3f}x the baseline)")
        figures[crf_name] = {k: round(v / rates["baseline"], 3) for k, v in rates.items()}
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
