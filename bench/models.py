"""Model and CRF speed on this machine's CPU, each against a named baseline, in one run.

1. forward+backward images/s at 321x321 for every registered model;
   `deeplabv3_resnet101` against torchvision's own `deeplabv3_resnet101` (ratio ~1: no overhead).
2. `dense_crf` seconds per 500x375 image with 21 labels against calling pydensecrf directly with
   the same energy (overhead goal <= 5%).
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch
import torchvision

from deeplab_core.crf import CRFParams, dense_crf
from deeplab_core.data.synth import render_scene
from deeplab_core.models import MODELS, build_model


def train_step_rate(model, size: int, batch: int, steps: int) -> float:
    """images/s of forward + backward (+ SGD step) at size×size."""
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-6)
    x = torch.randn(batch, 3, size, size)
    y = torch.randint(0, 21, (batch, size, size))

    def step():
        out = model(x)
        out = out["out"] if isinstance(out, dict) else out
        loss = torch.nn.functional.cross_entropy(out, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    step()  # warm-up
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return batch * steps / (time.perf_counter() - start)


def raw_pydensecrf(image, probs, p: CRFParams):
    import pydensecrf.densecrf as dcrf
    from pydensecrf.utils import unary_from_softmax

    c, h, w = probs.shape
    d = dcrf.DenseCRF2D(w, h, c)
    d.setUnaryEnergy(np.ascontiguousarray(unary_from_softmax(probs, clip=1e-8)))
    d.addPairwiseGaussian(sxy=p.pos_xy_std, compat=p.pos_w)
    d.addPairwiseBilateral(sxy=p.bi_xy_std, srgb=p.bi_rgb_std, rgbim=image, compat=p.bi_w)
    return np.array(d.inference(p.iterations)).reshape(c, h, w)


def crf_times(repeats: int) -> tuple[float, float]:
    image, label, _ = render_scene(np.random.default_rng(0), 375, 500, range(1, 21))
    rng = np.random.default_rng(1)
    logits = np.eye(21, dtype=np.float32)[label].transpose(2, 0, 1) * 3 + rng.normal(0, 1, (21, 375, 500))
    probs = np.exp(logits) / np.exp(logits).sum(0, keepdims=True)
    probs = probs.astype(np.float32)
    params = CRFParams()
    ours, raw = [], []
    for _ in range(repeats):  # interleaved, so drift on a noisy machine hits both alike
        t = time.perf_counter()
        dense_crf(image, probs, params)
        ours.append(time.perf_counter() - t)
        t = time.perf_counter()
        raw_pydensecrf(image, probs, params)
        raw.append(time.perf_counter() - t)
    return statistics.median(ours), statistics.median(raw)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=321)
    p.add_argument("--batch", type=int, default=2, help="v3 heads need >= 2 (BN after image pooling)")
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--models", help="comma-separated subset (default: all)")
    p.add_argument("--crf-repeats", type=int, default=5)
    args = p.parse_args()
    torch.manual_seed(0)
    results = {}
    names = args.models.split(",") if args.models else sorted(MODELS)
    print(f"forward+backward at {args.size}x{args.size}, batch {args.batch}, {torch.get_num_threads()} threads")
    for name in names:
        rate = train_step_rate(build_model(name, 21), args.size, args.batch, args.steps)
        results[name] = round(rate, 3)
        print(f"  {name:34s} {rate:7.3f} images/s", flush=True)
    ours = train_step_rate(build_model("deeplabv3_resnet101", 21), args.size, args.batch, args.steps)
    tv = torchvision.models.segmentation.deeplabv3_resnet101(weights=None, weights_backbone=None, num_classes=21,
                                                             aux_loss=False)
    theirs = train_step_rate(tv, args.size, args.batch, args.steps)
    print(f"deeplabv3_resnet101: ours {ours:.3f} images/s, torchvision {theirs:.3f} images/s, "
          f"ratio {ours / theirs:.2f} (goal ~1)")
    crf_ours, crf_raw = crf_times(args.crf_repeats)
    overhead = crf_ours / crf_raw - 1
    print(f"dense_crf 500x375, 21 labels: {crf_ours:.3f} s/image; pydensecrf direct {crf_raw:.3f} s/image; "
          f"overhead {100 * overhead:+.1f}% (goal <= 5%)")
    print(json.dumps({"train_images_per_s": results, "deeplabv3_resnet101_ratio_vs_torchvision": round(ours / theirs, 3),
                      "crf_s_per_image": round(crf_ours, 4), "crf_raw_s_per_image": round(crf_raw, 4),
                      "crf_overhead_pct": round(100 * overhead, 2)}))


if __name__ == "__main__":
    main()
