"""Dense CRF speed: pydensecrf (one CPU core per image, the baseline) against the PyTorch backend
(`deeplab_core.crf_torch`) on the CPU with --threads threads and, when CUDA is present, on the GPU
batched. The same VOC-sized images and probabilities for all (500×375, 21 labels, 10 iterations,
the released ResNet-101 setting; `crf_scene`: synthetic scenes with coarse probabilities as a DCNN
gives them). Prints seconds per image, images/s, label agreement with pydensecrf and the ratios
(goals: CPU torch <= 2x pydensecrf's time; GPU >= 100 images/s).

Needs only torch, numpy, pillow and pyarrow (plus pydensecrf when present): it runs on a bare GPU
machine from this checkout (`PYTHONPATH=. python bench/crf.py`). --cityscapes adds one 2048×1024
frame with 19 labels and reports its peak GPU memory.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # deeplab_core from this checkout
from deeplab_core.crf import CRFParams, dense_crf  # noqa: E402
from deeplab_core.crf_torch import dense_crf_batch  # noqa: E402
from deeplab_core.data.synth import crf_scene  # noqa: E402


def timed(fn, repeats: int) -> tuple[float, object]:
    """Median seconds of `repeats` calls (after one warm-up call), and the last result."""
    out = fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean(a.argmax(-3) == b.argmax(-3)))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=4, help="images timed on the CPU (default 4)")
    p.add_argument("--gpu-batch", type=int, default=32, help="images per batched GPU call (default 32)")
    p.add_argument("--threads", type=int, default=2, help="torch threads on the CPU (default 2)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--cityscapes", action="store_true", help="also one 2048×1024×19 frame on the GPU")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    params = CRFParams()
    scenes = [crf_scene(seed, 21, 375, 500)[:2] for seed in range(args.images)]
    report = {"image": "500x375", "labels": 21, "iterations": params.iterations, "threads": args.threads}

    try:
        import pydensecrf  # noqa: F401
        base_s, base = timed(lambda: [dense_crf(im, pr, params) for im, pr in scenes], args.repeats)
        report["pydensecrf_s_per_image"] = round(base_s / len(scenes), 4)
        print(f"pydensecrf (1 core): {base_s / len(scenes):.3f} s/image, {len(scenes) / base_s:.2f} images/s",
              flush=True)
    except ImportError:
        base = None
        print("pydensecrf not installed: no baseline, no agreement", flush=True)

    cpu_s, cpu = timed(lambda: [dense_crf(im, pr, params, "torch", device="cpu") for im, pr in scenes],
                       args.repeats)
    report["torch_cpu_s_per_image"] = round(cpu_s / len(scenes), 4)
    line = f"torch CPU ({args.threads} threads): {cpu_s / len(scenes):.3f} s/image"
    if base is not None:
        report["cpu_time_ratio_torch_over_pydensecrf"] = round(cpu_s / base_s, 3)
        report["cpu_label_agreement"] = round(statistics.mean(agreement(a, b) for a, b in zip(base, cpu)), 6)
        line += (f", {cpu_s / base_s:.2f}x pydensecrf's time (goal <= 2), label agreement "
                 f"{100 * report['cpu_label_agreement']:.3f}%")
    print(line, flush=True)

    if torch.cuda.is_available():
        report["gpu"] = torch.cuda.get_device_name()
        images = torch.from_numpy(np.stack([scenes[k % len(scenes)][0] for k in range(args.gpu_batch)])).cuda()
        probs = torch.from_numpy(np.stack([scenes[k % len(scenes)][1] for k in range(args.gpu_batch)])).cuda()
        gpu_s, gpu = timed(lambda: dense_crf_batch(images, probs, params), args.repeats)
        rate = args.gpu_batch / gpu_s
        report["gpu_batch"] = args.gpu_batch
        report["gpu_images_per_s"] = round(rate, 1)
        line = f"torch GPU ({report['gpu']}, batch {args.gpu_batch}): {rate:.1f} images/s (goal >= 100)"
        if base is not None:
            gpu_np = gpu[:len(scenes)].cpu().numpy()
            report["gpu_label_agreement"] = round(statistics.mean(agreement(a, b) for a, b in zip(base, gpu_np)), 6)
            report["gpu_speedup_over_pydensecrf_core"] = round(rate * base_s / len(scenes), 1)
            line += (f", {report['gpu_speedup_over_pydensecrf_core']:.0f}x one pydensecrf core, label agreement "
                     f"{100 * report['gpu_label_agreement']:.3f}%")
        print(line, flush=True)
        if args.cityscapes:
            image, prob, _ = crf_scene(0, 19, 1024, 2048)
            torch.cuda.reset_peak_memory_stats()
            frame_s, _ = timed(lambda: dense_crf(torch.from_numpy(image).cuda(), torch.from_numpy(prob).cuda(),
                                                 params, "torch"), 1)
            report["cityscapes_frame_s"] = round(frame_s, 3)
            report["cityscapes_peak_gpu_gb"] = round(torch.cuda.max_memory_allocated() / 2 ** 30, 2)
            print(f"one 2048x1024x19 frame: {frame_s:.3f} s, peak GPU memory {report['cityscapes_peak_gpu_gb']} GB "
                  f"(goal: fits 16 GB)", flush=True)
    else:
        print("no CUDA device: GPU figures skipped", flush=True)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
