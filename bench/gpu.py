"""Training-step and inference speed of the paper's models on one GPU (or, slowly, the CPU).

Needs only torch, torchvision and numpy: it runs on a bare GPU machine from this checkout
(`PYTHONPATH=. python bench/gpu.py`), no Ray, MLflow or pydensecrf.

1. The training step (`deeplab_core.train_step.train_step`: forward, loss, backward, SGD with
   momentum, poly LR) at the paper's batch 10, 321² crops, the batch already on the device (Ray
   Data's prefetch thread puts it there), for each model × precision × compile mode: images/s,
   peak memory, the loss curve, and the ratio to the named baseline **"before #15"**: the same
   model and optimizer recipe in fp32, eager, contiguous, with torchvision's FrozenBatchNorm2d, the
   foreach SGD and the loss read every step.
2. The same step of our `deeplabv3_resnet101` against torchvision's `deeplabv3_resnet101`
   (ratio ~1: our builders add no cost).
3. Inference: `coarse_scores` (what batch segmentation runs on the GPU) on 500×375 images.

Every result is printed and appended to --out (JSON lines) as soon as it is measured, so a run cut
short keeps what it measured. Goal: >= 300 images/s for deeplabv2_resnet101_aspp_l at batch 10.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torchvision
from torchvision.ops import misc

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # deeplab_core from this checkout
from deeplab_core.data.synth import render_scene, void_borders  # noqa: E402
from deeplab_core.inference import coarse_scores  # noqa: E402
from deeplab_core.losses import param_groups  # noqa: E402
from deeplab_core.models import build_model  # noqa: E402
from deeplab_core.models.backbones import FrozenBatchNorm2d  # noqa: E402
from deeplab_core.schedules import lr_scheduler  # noqa: E402
from deeplab_core.train_step import (autocast_dtype, compile_model, grad_scaler, make_optimizer,  # noqa: E402
                                     preferred_memory_format, train_step)

# The paper's models as the presets build them (frozen BN: the ImageNet statistics).
MODELS = {"deeplabv2_resnet101_aspp_l": {"output_stride": 8, "bn": "frozen"}, "deeplabv2_vgg16_largefov": {}}


def batch(n: int, size: int, device: torch.device) -> dict:
    """Synthetic VOC-like scenes (coherent objects on a background, void borders): a loss curve on
    them means something, which per-pixel random labels would not give."""
    pairs = [render_scene(np.random.default_rng([5, i]), size, size, range(1, 21))[:2] for i in range(n)]
    return {"image": torch.from_numpy(np.stack([p[0] for p in pairs])).to(device),
            "label": torch.from_numpy(np.stack([void_borders(p[1], 2) for p in pairs])).to(device)}


def calibrated(name: str, options: dict) -> torch.nn.Module:
    """The model with seeded random weights, tamed so its loss curve means something (measured: the
    raw random ResNet-101 ASPP-L starts at a loss of 76 and diverges within 35 steps): the class
    logits start at zero (ln 21), and frozen BN gets the statistics of a plain-BN twin on a random
    batch, as ImageNet weights would give. The arithmetic, hence the speed, is unchanged."""
    torch.manual_seed(0)
    model = build_model(name, 21, **options)
    for m in model.classifier.modules():
        if isinstance(m, torch.nn.Conv2d) and m.out_channels == 21:
            torch.nn.init.zeros_(m.weight)
    if options.get("bn") == "frozen":
        twin = build_model(name, 21, **{**options, "bn": "plain"})
        twin.load_state_dict(model.state_dict(), strict=False)
        for m in twin.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.momentum = 1.0  # running statistics := this batch's
        with torch.no_grad():
            twin.train()(torch.randn(2, 3, 97, 97))
        model.load_state_dict(twin.state_dict())
    return model


def as_before(model: torch.nn.Module) -> torch.nn.Module:
    """The model as it was before #15: torchvision's elementwise FrozenBatchNorm2d."""
    for m in model.modules():
        if type(m) is FrozenBatchNorm2d:
            m.__class__ = misc.FrozenBatchNorm2d
    return model


def step_rate(model: torch.nn.Module, device: torch.device, precision: str, compile_mode: str, args,
              baseline: bool = False) -> dict:
    """images/s of `args.steps` timed training steps after `args.warmup` (compilation, CUDA graph
    recording and cuDNN autotuning happen in the warm-up), and the peak memory."""
    memory_format = torch.contiguous_format if baseline else preferred_memory_format(device)
    model = model.to(device, memory_format=memory_format).train()
    if baseline:
        optimizer = torch.optim.SGD(param_groups(model, args.lr), lr=args.lr, momentum=0.9, foreach=True)
    else:
        optimizer = make_optimizer(model, "sgd", args.lr, device=device)
    scheduler = lr_scheduler(optimizer, "poly", 10_000)
    dtype = autocast_dtype(precision, device)
    scaler = grad_scaler(dtype, device)
    net = compile_model(model, compile_mode, device)
    data = batch(args.batch, args.size, device)
    started, losses = time.perf_counter(), []
    for i in range(args.warmup + args.steps):
        if i == args.warmup:
            sync(device)
            warm_s, start = time.perf_counter() - started, time.perf_counter()
            if device.type == "cuda":  # steady state: not cuDNN's autotuning workspaces
                torch.cuda.reset_peak_memory_stats(device)
        loss = train_step(net, optimizer, scaler, data, device, dtype, memory_format)
        scheduler.step()
        losses.append(loss)
        if baseline:
            loss.item()  # the loop before #15 read the loss every step
    values = torch.stack(losses).tolist()  # read once, at the end
    elapsed = time.perf_counter() - start
    bad = [k + 1 for k, v in enumerate(values) if not np.isfinite(v)]
    result = {"images_per_s": round(args.batch * args.steps / elapsed, 2), "step_ms": round(1000 * elapsed / args.steps, 2),
              "warmup_s": round(warm_s, 1), "losses_first_5": [round(v, 4) for v in values[:5]], "loss_last": round(values[-1], 4),
              "first_nonfinite_step": bad[0] if bad else None}
    if device.type == "cuda":
        result["peak_memory_gb"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    return result


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def inference_rate(name: str, options: dict, device: torch.device, precision: str, args) -> dict:
    """images/s of `coarse_scores` on 500×375 uint8 images (the GPU half of batch segmentation)."""
    model = build_model(name, 21, **options).to(device, memory_format=preferred_memory_format(device)).eval()
    images = np.random.default_rng(0).integers(0, 256, (args.infer_batch, 375, 500, 3), dtype=np.uint8)
    amp = autocast_dtype(precision, device) is not None
    for _ in range(2):
        coarse_scores(model, images, device, amp=amp)
    sync(device)
    start = time.perf_counter()
    for _ in range(args.infer_steps):
        coarse_scores(model, images, device, amp=amp)
    sync(device)
    return {"images_per_s": round(args.infer_batch * args.infer_steps / (time.perf_counter() - start), 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=",".join(MODELS), help=f"comma-separated (default: {','.join(MODELS)})")
    p.add_argument("--precisions", default="fp32,fp16,bf16")
    p.add_argument("--compile", default="reduce-overhead,default", help="compile modes, timed after all eager runs")
    p.add_argument("--compile-precisions", default="bf16", help="precisions timed compiled (compiling takes minutes)")
    p.add_argument("--batch", type=int, default=10)
    p.add_argument("--size", type=int, default=321)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--lr", type=float, default=1e-5,
                   help="base LR (poly, classifier 10x); from random weights 1e-4 diverges (measured: NaN by step 6)")
    p.add_argument("--infer-batch", type=int, default=16)
    p.add_argument("--infer-steps", type=int, default=10)
    p.add_argument("--out", default="bench_gpu.jsonl", help="JSON lines, appended as results come")
    args = p.parse_args()
    # fp16's loss scaler skips the first steps (overflowing gradients): the scheduler warns, harmlessly
    warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step()`")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cudnn.benchmark = True  # fixed crop size: let cuDNN pick its fastest kernels
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    out = open(args.out, "a")
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"{where}, torch {torch.__version__}, batch {args.batch}, {args.size}², {args.steps} timed steps", flush=True)

    def record(kind: str, **fields) -> dict:
        row = {"kind": kind, "device": where, "batch": args.batch, **fields}
        print(json.dumps(row), flush=True)
        out.write(json.dumps(row) + "\n")
        out.flush()
        return row

    def build(name: str) -> torch.nn.Module:
        return calibrated(name, MODELS.get(name, {}))

    models = args.models.split(",")
    precisions = args.precisions.split(",")
    modes = [m for m in args.compile.split(",") if m != "none"]
    baselines = {}
    for name in models:  # eager first: cheap, and the baseline every ratio names
        baselines[name] = record("train", model=name, precision="fp32", compile="none", variant="before #15",
                                 **step_rate(as_before(build(name)), device, "fp32", "none", args, baseline=True))
        for precision in precisions:
            r = step_rate(build(name), device, precision, "none", args)
            record("train", model=name, precision=precision, compile="none",
                   ratio=round(r["images_per_s"] / baselines[name]["images_per_s"], 2), **r)
    ours = step_rate(build("deeplabv3_resnet101"), device, "bf16", "none", args)
    tv = torchvision.models.segmentation.deeplabv3_resnet101(weights=None, weights_backbone=None, num_classes=21,
                                                             aux_loss=False)
    tv.forward = lambda x, _forward=tv.forward: _forward(x)["out"]  # the logits, as our models return
    theirs = step_rate(tv, device, "bf16", "none", args)
    record("train_vs_torchvision", model="deeplabv3_resnet101", precision="bf16", ours=ours["images_per_s"],
           torchvision=theirs["images_per_s"], ratio=round(ours["images_per_s"] / theirs["images_per_s"], 2))
    for name in models:
        record("inference", model=name, precision="bf16", size="500x375", batch=args.infer_batch,
               **inference_rate(name, MODELS[name], device, "bf16", args))
    for mode in modes:  # compilation takes minutes: last
        for name in models:
            for precision in args.compile_precisions.split(","):
                torch._dynamo.reset()
                try:
                    r = step_rate(build(name), device, precision, mode, args)
                except Exception as e:  # one mode failing on this torch must not lose the others
                    record("train", model=name, precision=precision, compile=mode, error=f"{type(e).__name__}: {e}"[:300])
                    continue
                record("train", model=name, precision=precision, compile=mode,
                       ratio=round(r["images_per_s"] / baselines[name]["images_per_s"], 2), **r)


if __name__ == "__main__":
    main()
