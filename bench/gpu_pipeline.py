"""The product's GPU half, end to end on one machine: the pipelines through Ray on a GPU, each against
the same work done directly on the same device (the named baselines), on data this script makes.

1. data: synthetic VOC scenes (500×375) into Parquet (`pipelines.preprocess`, Ray tasks).
2. train: baseline **direct step**, `bench/gpu.py`'s training step of the model at the same precision,
   batch and crop, the batch already on the device; then `pipelines.train` through Ray Train, one GPU
   worker, tracked in a local sqlite MLflow store: its steady images/s (the median of the run's
   `images_per_s` log windows after the first), the ratio (goal >= 0.95), the val mIoU, the
   checkpoint and the registered model.
3. segment: --images synthetic JPEGs; baseline **direct loop**, one process: read, decode,
   `coarse_scores`, the masks with the torch CRF (`label_maps_on_device`, as segment's GPU actors),
   PNG write; then `pipelines.segment --crf-backend auto` (the torch CRF in the GPU actors, no CPU
   pool): images/s and the ratio (goal >= 1.0: Ray overlaps decode and write with the GPU); then
   `--crf-backend pydensecrf` (the CPU path) on 10 of the images: their masks equal on >= 99.9%.
4. evaluate: `pipelines.evaluate --crf-backend auto` on the val split.

Every figure is printed and appended to --out (JSON lines) as soon as it is measured, so a run cut short
keeps what it measured. On a GPU machine without a package index (docs/gpu.md):
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
    PYTHONPATH=/tmp/site:$PWD python3 bench/gpu_pipeline.py --out $OUT/gpu_pipeline.jsonl
Without a GPU, --tiny runs every step at toy sizes on the CPU: the check before the GPU's time is spent.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]  # deeplab_core, pipelines and bench/gpu.py from this checkout
import gpu as direct  # noqa: E402  (bench/gpu.py)

from deeplab_core.checkpoint import load_model, save_model  # noqa: E402
from deeplab_core.crf import CRF_PRESETS  # noqa: E402
from deeplab_core.data.labels import VOC  # noqa: E402
from deeplab_core.data.synth import render_scene, write_voc  # noqa: E402
from deeplab_core.inference import coarse_scores, label_maps_on_device  # noqa: E402

GPU = {"model": "deeplabv2_resnet101_aspp_l", "options": {"output_stride": 8, "bn": "frozen"}, "batch": 10,
       "crop": 321, "iterations": 60, "log_interval": 10, "train": 40, "val": 20, "images": 1000,
       "segment_batch": 32, "size": (500, 375)}
TINY = {"model": "deeplabv3plus_mobilenetv3", "options": {"width_mult": 0.5}, "batch": 2, "crop": 48,
        "iterations": 4, "log_interval": 1, "train": 6, "val": 3, "images": 12, "segment_batch": 4,
        "size": (80, 60)}
CPU_PATH_IMAGES = 10


def record(out: Path, name: str, result: dict) -> dict:
    line = {"step": name, **result}
    print(json.dumps(line), flush=True)
    with out.open("a") as f:
        f.write(json.dumps(line) + "\n")
    return result


def cli(module, argv: list[str]) -> dict:
    """A pipeline's CLI in this process; its summary is the dict its main returns through emit_summary."""
    from pipelines import cli as cli_module

    printed = io.StringIO()
    saved, sys.stdout = sys.stdout, printed
    try:
        code = cli_module.run(module.main, argv)
    finally:
        sys.stdout = saved
    lines = [line for line in printed.getvalue().splitlines() if line.startswith("{")]
    if code != 0 or not lines:
        raise SystemExit(f"{module.__name__} {' '.join(argv[:2])}: exit {code}")
    return json.loads(lines[-1])


def make_data(work: Path, size: dict) -> str:
    from pipelines.preprocess import preprocess

    write_voc(work / "raw", train=size["train"], val=size["val"], seed=5, size=size["size"])
    preprocess("voc", str(work / "raw"), str(work / "parquet"))
    return str(work / "parquet")


def direct_step(size: dict, device: torch.device, precision: str, steps: int, init: Path) -> dict:
    """bench/gpu.py's step of the calibrated model (random weights tamed as ImageNet's would be: the raw
    random ResNet-101 diverges), saved first to `init` as the model the pipeline starts from."""
    args = argparse.Namespace(batch=size["batch"], size=size["crop"], steps=steps, warmup=5 if device.type == "cuda"
                              else 1, lr=1e-5)
    model = direct.calibrated(size["model"], size["options"])
    save_model(init, model, {"name": size["model"], "num_classes": VOC.num_classes, "options": size["options"],
                             "msc_scales": None, **VOC.to_dict()})
    return direct.step_rate(model, device, precision, "none", args)


def train_pipeline(data: str, work: Path, size: dict, device: torch.device, precision: str, init: Path) -> dict:
    from mlflow.tracking import MlflowClient

    from pipelines import train

    overrides = {"data.uri": data, "data.train_split": "train", "data.crop_size": size["crop"],
                 "model.name": size["model"], "model.options": json.dumps(size["options"]),
                 "model.init_weights": "null", "model.init_from": str(init), "train.batch_size": size["batch"],
                 "train.iterations": size["iterations"], "train.eval_interval": size["iterations"],
                 "train.checkpoint_interval": size["iterations"], "train.log_interval": size["log_interval"],
                 "train.precision": precision, "train.base_lr": 1e-5, "ray.num_workers": 1,
                 "ray.use_gpu": str(device.type == "cuda").lower(), "ray.storage_path": str(work / "runs"),
                 "tracking.experiment": "gpu-pipeline", "tracking.register_model": "gpu-pipeline",
                 "tracking.overlays": 1}
    argv = ["--config", str(ROOT / "configs" / "voc_resnet101_aspp_l.yaml")]
    for key, value in overrides.items():
        argv += ["--set", f"{key}={value}"]
    started = time.perf_counter()
    summary = cli(train, argv)
    windows = [m.value for m in MlflowClient().get_metric_history(summary["run_id"], "images_per_s")]
    steady = windows[1:] or windows
    return {"images_per_s": round(statistics.median(steady), 2), "windows": [round(w, 2) for w in windows],
            "wall_s": round(time.perf_counter() - started, 1), "val_miou": summary["val_miou"],
            "checkpoint": summary["checkpoint"], "model_uri": summary["model_uri"]}


def write_photos(folder: Path, count: int, size: tuple[int, int]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    width, height = size
    paths = []
    for i in range(count):
        image = render_scene(np.random.default_rng([7, i]), height, width, range(1, 21))[0]
        path = folder / f"photo_{i:05d}.jpg"
        Image.fromarray(image).save(path, quality=90)
        paths.append(path)
    return paths


def direct_loop(checkpoint: str, photos: list[Path], out: Path, batch: int, device: torch.device) -> dict:
    """What one GPU does with no pipeline around it: read, decode, network, CRF, argmax, PNG write."""
    model, _ = load_model(checkpoint)
    model = model.to(device)
    crf = CRF_PRESETS["resnet101_voc"]
    out.mkdir(parents=True, exist_ok=True)

    def run(paths: list[Path]) -> None:
        for first in range(0, len(paths), batch):
            group = paths[first:first + batch]
            images = np.stack([np.asarray(Image.open(io.BytesIO(p.read_bytes())).convert("RGB")) for p in group])
            coarse = coarse_scores(model, images, device, amp=device.type == "cuda")
            masks = label_maps_on_device(images, coarse, crf, crf_backend="torch")
            for p, labels in zip(group, masks.labels):
                Image.fromarray(labels).save(out / f"{p.stem}.png")

    run(photos[:batch])  # warm-up: cuDNN autotuning, Triton compilation
    direct.sync(device)
    started = time.perf_counter()
    run(photos)
    direct.sync(device)
    elapsed = time.perf_counter() - started
    return {"images": len(photos), "images_per_s": round(len(photos) / elapsed, 2), "seconds": round(elapsed, 2)}


def segment_pipeline(checkpoint: str, photos: Path, out: Path, batch: int, backend: str) -> dict:
    from pipelines import segment

    summary = cli(segment, ["--model", checkpoint, "--input", str(photos), "--output", str(out),
                            "--crf-backend", backend, "--scale", "native", "--batch-size", str(batch)])
    return {key: summary[key] for key in ("images", "errors", "images_per_s", "seconds") if key in summary}


def masks_agreement(first: Path, second: Path) -> float:
    pairs = [(p, second / p.relative_to(first)) for p in sorted(first.rglob("*.png"))]
    assert pairs and all(q.exists() for _, q in pairs), f"masks missing under {second}"
    return float(np.mean([np.mean(np.asarray(Image.open(p)) == np.asarray(Image.open(q))) for p, q in pairs]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="gpu_pipeline.jsonl", help="JSON lines, appended as results come")
    p.add_argument("--tiny", action="store_true", help="toy sizes (a CPU check of the script)")
    p.add_argument("--precision", default="bf16", help="training precision (default bf16)")
    p.add_argument("--images", type=int, help="JPEGs segmented (default 1000; --tiny 12)")
    p.add_argument("--work", help="working folder (default: a temporary one)")
    args = p.parse_args()
    size = dict(TINY if args.tiny else GPU)
    if args.images:
        size["images"] = args.images
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    precision = args.precision if device.type == "cuda" else "fp32"
    out = Path(args.out)
    work = Path(args.work or tempfile.mkdtemp(prefix="gpu-pipeline-"))
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{work / 'mlflow.db'}")
    from pipelines.cli import init_ray

    init_ray(min_cpus=4)  # one Ray for every step: the pipelines join it
    record(out, "setup", {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
                          "torch": torch.__version__, "python": sys.version.split()[0], "tiny": args.tiny,
                          "precision": precision, "work": str(work)})

    data = make_data(work, size)
    init = work / "calibrated"
    base = record(out, "train_direct_step", direct_step(size, device, precision, 30 if not args.tiny else 2, init))
    trained = train_pipeline(data, work, size, device, precision, init)
    trained["ratio_to_direct_step"] = round(trained["images_per_s"] / base["images_per_s"], 3)
    record(out, "train_pipeline", {**trained, "goal": ">= 0.95 of the direct step"})

    photos = write_photos(work / "photos", size["images"], size["size"])
    loop = record(out, "segment_direct_loop", direct_loop(trained["checkpoint"], photos, work / "direct-masks",
                                                          size["segment_batch"], device))
    seg = segment_pipeline(trained["checkpoint"], work / "photos", work / "seg-auto", size["segment_batch"], "auto")
    seg["ratio_to_direct_loop"] = round(seg["images_per_s"] / loop["images_per_s"], 3)
    record(out, "segment_pipeline", {**seg, "goal": ">= 1.0 of the direct loop"})

    few = work / "photos-few"
    few.mkdir()
    for photo in photos[:CPU_PATH_IMAGES]:
        (few / photo.name).write_bytes(photo.read_bytes())
    on_gpu = segment_pipeline(trained["checkpoint"], few, work / "seg-few-auto", size["segment_batch"], "auto")
    on_cpu = segment_pipeline(trained["checkpoint"], few, work / "seg-few-pydensecrf", size["segment_batch"],
                              "pydensecrf")
    record(out, "segment_cpu_path", {"images": on_cpu["images"], "pixels_equal": round(masks_agreement(
        work / "seg-few-auto" / "masks", work / "seg-few-pydensecrf" / "masks"), 6), "goal": ">= 0.999",
        "gpu_path_images": on_gpu["images"]})

    from pipelines import evaluate

    scored = cli(evaluate, ["--model", trained["checkpoint"], "--data", data, "--split", "val",
                            "--crf-backend", "auto"])
    record(out, "evaluate", {k: v for k, v in scored.items() if isinstance(v, (int, float, str))})


if __name__ == "__main__":
    main()
