"""Dense CRF speed: pydensecrf (one CPU core per image, the baseline) against the PyTorch backend
(`deeplab_core.crf.torch_backend`) on the CPU with --threads threads and, when CUDA is present, on the GPU
batched, both mean-field loops: the reference in PyTorch ops and the Triton kernels that `auto` takes
on CUDA. The same VOC-sized images and probabilities for all (500×375, 21 labels, 10 iterations,
the released ResNet-101 setting; `crf_scene`: synthetic scenes with coarse probabilities as a DCNN
gives them). Prints seconds per image, images/s, label agreement with pydensecrf (all pixels and the
pixels the CRF changed), max |ΔQ| of the Triton loop against the reference, whether two runs are
bit-identical, and the ratios (goals: CPU torch <= 2x pydensecrf's time; GPU Triton >= 600 images/s,
labels >= 99.9% / 99% of changed pixels, |ΔQ| <= 1e-4; the Cityscapes frame < 40 ms).

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
from deeplab_core.crf import dense_crf_batch  # noqa: E402
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


def changed_agreement(a: np.ndarray, b: np.ndarray, probs: np.ndarray) -> float:
    """Agreement on the pixels whose label the CRF (`a`) changed."""
    changed = a.argmax(-3) != probs.argmax(-3)
    return float(np.mean((a.argmax(-3) == b.argmax(-3))[changed])) if changed.any() else 1.0


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
        report["gpu_batch"] = args.gpu_batch
        images = torch.from_numpy(np.stack([scenes[k % len(scenes)][0] for k in range(args.gpu_batch)])).cuda()
        probs = torch.from_numpy(np.stack([scenes[k % len(scenes)][1] for k in range(args.gpu_batch)])).cuda()
        results = {}
        for mean_field in ("reference", "triton"):
            gpu_s, results[mean_field] = timed(lambda: dense_crf_batch(images, probs, params, mean_field=mean_field),
                                               args.repeats)
            rate = args.gpu_batch / gpu_s
            report[f"gpu_{mean_field}_images_per_s"] = round(rate, 1)
            line = f"torch GPU, {mean_field} mean-field ({report['gpu']}, batch {args.gpu_batch}): {rate:.1f} images/s"
            if base is not None:
                gpu_np = results[mean_field][:len(scenes)].cpu().numpy()
                agree = [agreement(a, b) for a, b in zip(base, gpu_np)]
                changed = [changed_agreement(a, b, pr) for a, b, (_, pr) in zip(base, gpu_np, scenes)]
                report[f"gpu_{mean_field}_label_agreement"] = round(statistics.mean(agree), 6)
                report[f"gpu_{mean_field}_changed_label_agreement"] = round(statistics.mean(changed), 6)
                report[f"gpu_{mean_field}_speedup_over_pydensecrf_core"] = round(rate * base_s / len(scenes), 1)
                line += (f", {rate * base_s / len(scenes):.0f}x one pydensecrf core, label agreement "
                         f"{100 * statistics.mean(agree):.3f}% (changed pixels {100 * statistics.mean(changed):.3f}%)")
            print(line, flush=True)
        report["gpu_triton_over_reference"] = round(report["gpu_triton_images_per_s"]
                                                    / report["gpu_reference_images_per_s"], 2)
        report["gpu_triton_max_abs_dq"] = float((results["triton"] - results["reference"]).abs().max())
        again = dense_crf_batch(images, probs, params, mean_field="triton")
        report["gpu_triton_bit_identical"] = bool(torch.equal(again, results["triton"]))
        print(f"Triton / reference: {report['gpu_triton_over_reference']}x; max |dQ| "
              f"{report['gpu_triton_max_abs_dq']:.2e} (goal <= 1e-4); two runs bit-identical: "
              f"{report['gpu_triton_bit_identical']}; goal >= 600 images/s", flush=True)
        if args.cityscapes:
            image, prob, _ = crf_scene(0, 19, 1024, 2048)
            image, prob = torch.from_numpy(image).cuda(), torch.from_numpy(prob).cuda()
            for mean_field in ("reference", "triton"):
                torch.cuda.reset_peak_memory_stats()
                frame_s, _ = timed(lambda: dense_crf_batch([image], [prob], params, mean_field=mean_field), 3)
                report[f"cityscapes_{mean_field}_frame_s"] = round(frame_s, 4)
                report[f"cityscapes_{mean_field}_peak_gpu_gb"] = round(torch.cuda.max_memory_allocated() / 2 ** 30, 2)
                print(f"one 2048x1024x19 frame, {mean_field} mean-field: {1000 * frame_s:.1f} ms, peak GPU memory "
                      f"{report[f'cityscapes_{mean_field}_peak_gpu_gb']} GB (goal with Triton: < 40 ms)", flush=True)
    else:
        print("no CUDA device: GPU figures skipped", flush=True)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
