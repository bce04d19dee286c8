"""Training throughput: the Ray Train path against a plain single-process PyTorch loop.

Same model (configs/synthetic_tiny.yaml), same batch, same in-memory uint8 crops, same step function
(`deeplab_core.train_step.train_step`), equal total threads: the loop runs one process with T threads;
the Ray path runs one Ray Train worker with T threads fed through Ray Data (`get_dataset_shard`,
`iter_torch_batches` with prefetching). Prints iterations/s of both, the ratio (goal >= 0.9) and
the Ray path's data-wait fraction (goal < 5%).
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import numpy as np
import ray
import ray.train
import ray.train.torch
import torch
from ray.train import RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from deeplab_core.data.synth import render_scene, void_borders
from deeplab_core.models import build_model
from pipelines.cli import init_ray
from pipelines.config import config_from_dict, load_config
from deeplab_core.train_step import train_step
from pipelines.training import optimizer_for

PRESET = os.path.join(os.path.dirname(__file__), "..", "configs", "synthetic_tiny.yaml")


def crops(n: int, size: int) -> dict:
    images, labels = [], []
    for i in range(n):
        image, label, _ = render_scene(np.random.default_rng([9, i]), size, size, range(1, 21))
        images.append(image)
        labels.append(void_borders(label, 2))
    return {"image": np.stack(images), "label": np.stack(labels)}


def run_steps(cfg, batches, warmup: int, steps: int, prepare=lambda model: model) -> dict:
    """`warmup` untimed steps, then `steps` timed ones; waiting for the next batch is timed apart."""
    torch.manual_seed(0)
    model = prepare(build_model(cfg.model.name, 21, **cfg.model.options))
    optimizer = optimizer_for(cfg, model, torch.device("cpu"))
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    device = torch.device("cpu")
    model.train()
    waited = 0.0
    for i in range(warmup + steps):
        if i == warmup:
            start, waited = time.perf_counter(), 0.0
        t = time.perf_counter()
        batch = next(batches)
        waited += time.perf_counter() - t
        train_step(model, optimizer, scaler, batch, device)
    elapsed = time.perf_counter() - start
    return {"iterations_per_s": steps / elapsed, "data_wait_fraction": waited / elapsed}


def loop_batches(data: dict, batch_size: int):
    n = len(data["image"])
    while True:
        for i in range(0, n - batch_size + 1, batch_size):
            yield {k: torch.from_numpy(v[i:i + batch_size]) for k, v in data.items()}


def stream(data: dict, rows: int) -> ray.data.Dataset:
    """One pass of `rows` rows cycling over the crops, as training streams its passes in one execution
    (restarting an epoch per pass would stall the worker at every boundary)."""
    items = [{"image": data["image"][i % len(data["image"])], "label": data["label"][i % len(data["label"])]}
             for i in range(rows)]
    return ray.data.from_items(items)


def ray_worker(config: dict) -> None:
    cfg = config_from_dict(config["cfg"])
    torch.set_num_threads(config["threads"])
    shard = ray.train.get_dataset_shard("train")
    batches = iter(shard.iter_torch_batches(batch_size=config["batch"], drop_last=True, prefetch_batches=2))
    metrics = run_steps(cfg, batches, config["warmup"], config["steps"], ray.train.torch.prepare_model)
    # Train V2 hands back only the metrics attached to a checkpoint, so report a (tiny) one.
    with tempfile.TemporaryDirectory() as tmp:
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))


def ray_path(cfg, data: dict, args, workers: int) -> dict:
    """Ray Train with `workers` DDP workers x (threads / workers) torch threads; the global batch equals
    the loop's, so iterations compare one for one."""
    threads = args.threads // workers
    trainer = TorchTrainer(ray_worker, train_loop_config={"cfg": cfg.to_dict(), "threads": threads,
                                                          "batch": cfg.train.batch_size // workers,
                                                          "warmup": args.warmup, "steps": args.steps},
                           scaling_config=ScalingConfig(num_workers=workers, resources_per_worker={"CPU": threads}),
                           run_config=RunConfig(storage_path=tempfile.mkdtemp(prefix="bench-train-")),
                           datasets={"train": stream(data, cfg.train.batch_size * (args.warmup + args.steps + 4))})
    return trainer.fit().metrics


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--images", type=int, default=64)
    args = p.parse_args()
    cfg = load_config(PRESET, ["data.uri=in-memory"])
    data = crops(args.images, cfg.data.crop_size)

    torch.set_num_threads(args.threads)
    loop = run_steps(cfg, loop_batches(data, cfg.train.batch_size), args.warmup, args.steps)
    print(f"plain PyTorch loop (1 process x {args.threads} threads, batch {cfg.train.batch_size}): "
          f"{loop['iterations_per_s']:.2f} it/s", flush=True)

    init_ray(min_cpus=args.threads + 1, log_to_driver=False)
    report = {"model": cfg.model.name, "batch": cfg.train.batch_size, "threads": args.threads,
              "loop_it_per_s": round(loop["iterations_per_s"], 3)}
    for workers in sorted({1, args.threads}):
        ours = ray_path(cfg, data, args, workers)
        ratio = ours["iterations_per_s"] / loop["iterations_per_s"]
        print(f"Ray Train + Ray Data ({workers} worker(s) x {args.threads // workers} thread(s)): "
              f"{ours['iterations_per_s']:.2f} it/s, ratio {ratio:.2f} (goal >= 0.9), "
              f"data wait {100 * ours['data_wait_fraction']:.1f}% of step time (goal < 5%)", flush=True)
        report[f"ray_{workers}x{args.threads // workers}"] = {
            "it_per_s": round(ours["iterations_per_s"], 3), "ratio": round(ratio, 3),
            "data_wait_fraction": round(ours["data_wait_fraction"], 4)}
    ray.shutdown()
    print(json.dumps(report))


if __name__ == "__main__":
    main()
