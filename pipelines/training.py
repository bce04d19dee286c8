"""The Ray Train worker loop: DDP training of a DeepLab model on its shard of the Ray Data stream.

Every `checkpoint_interval` iterations all ranks evaluate (confusion matrices summed across
workers), rank 0 writes a checkpoint (model, optimizer, scheduler, iteration, config) and every rank
reports; rank 0 then sends the metrics buffered since the last checkpoint to MLflow. A worker that
dies therefore resumes from the last checkpoint with no metric step logged twice or lost.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import yaml

import ray.train
import ray.train.torch
from deeplab_core.checkpoint import save_model, unwrap
from deeplab_core.data.codec import decode_image, decode_label
from deeplab_core.inference import predict_probabilities
from deeplab_core.metrics import ConfusionMatrix
from deeplab_core.models import build_model
from deeplab_core.schedules import lr_scheduler
from deeplab_core.train_step import (autocast_dtype, buffers_change, compile_mode, compile_model, grad_scaler,
                                     make_optimizer, preferred_memory_format, train_step)
from pipelines import storage
from pipelines.cli import log
from pipelines.config import ExperimentConfig, config_from_dict
from pipelines.datasets import read_rows
from pipelines.tracking import MetricBuffer
from pipelines.weights import local_weights_file

STATE_FILE = "state.pt"
DIVERGED_FILE = "diverged.json"
CONFUSION_FILE = "confusion.npy"


def model_spec(cfg: ExperimentConfig, manifest: dict, trained_long_side: int | None = None) -> dict:
    """What `deeplab_core.checkpoint.load_model` needs to rebuild the model, plus the label set and
    the scale of the training images (`datasets.median_long_side`), at which inference runs."""
    return {"name": cfg.model.name, "num_classes": manifest["num_classes"], "options": dict(cfg.model.options),
            "msc_scales": list(cfg.model.msc_scales) if cfg.model.msc else None, "dataset": manifest["dataset"],
            "classes": manifest["classes"], "palette": manifest["palette"], "trained_long_side": trained_long_side}


def initial_model(cfg: ExperimentConfig, spec: dict, init_state: dict | None = None) -> torch.nn.Module:
    """The model before the first step: built (backbone from `model.init_weights`), then the tensors
    of `model.init_from` that match by name and shape (`init_state`, from `matching_state`)."""
    options = dict(spec["options"])
    if cfg.model.init_weights:
        options["backbone_weights"] = local_weights_file(cfg.model.init_weights, tempfile.mkdtemp())
    if spec["msc_scales"]:
        options["msc_scales"] = tuple(spec["msc_scales"])
    model = build_model(spec["name"], spec["num_classes"], **options)
    if init_state:
        unwrap(model).load_state_dict(init_state, strict=False)
    return model


def evaluate(model: torch.nn.Module, rows: list[dict], num_classes: int, device: torch.device) -> ConfusionMatrix:
    """This rank's val rows at their original resolution; the matrices of all ranks are summed."""
    model.eval()
    cm = ConfusionMatrix(num_classes)
    with torch.no_grad():
        for row in rows:
            probs = predict_probabilities(model, decode_image(row["image"]), device)
            cm.update(probs.argmax(0), decode_label(row["label"]))
    if dist.is_available() and dist.is_initialized():
        total = torch.from_numpy(cm.matrix).to(device)
        dist.all_reduce(total)
        cm = ConfusionMatrix(num_classes, total.cpu().numpy())
    return cm


def optimizer_for(cfg: ExperimentConfig, model: torch.nn.Module, device: torch.device) -> torch.optim.Optimizer:
    """`train.optimizer` with the config's LR recipe."""
    t = cfg.train
    return make_optimizer(model, t.optimizer, t.base_lr, t.momentum, t.classifier_lr_mult, t.weight_decay, device)


def window_losses(losses: list[torch.Tensor], world: int) -> list[float]:
    """The per-step losses of a log window averaged over all ranks, read in one host sync: a NaN on
    any rank is a NaN on every rank, so all of them see a diverged run at the same iteration."""
    values = torch.stack(losses).float()
    if world > 1:
        dist.all_reduce(values)
        values /= world
    return values.tolist()


class NonFiniteLoss(ValueError):
    """Training diverged; the message names the iteration, the learning rate and the likely causes."""


def _batches(shard, batch_size: int, device: torch.device):
    """Endless stream of batches on `device`, epoch after epoch (each epoch re-augments). Ray Data's
    prefetch thread copies them, from pinned memory on a GPU so the copy never waits for the GPU."""
    while True:
        seen = 0
        for batch in shard.iter_torch_batches(batch_size=batch_size, drop_last=True, prefetch_batches=2,
                                              device=device, pin_memory=device.type == "cuda"):
            seen += 1
            yield batch
        if not seen:
            raise ValueError(f"the training split yields no full batch of {batch_size} per worker: "
                             "lower train.batch_size or ray.num_workers")


def train_loop(loop_config: dict) -> None:
    cfg = config_from_dict(loop_config["config"])
    spec = loop_config["spec"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(cfg.ray.torch_threads or max(1, int(cfg.ray.cpus_per_worker)))
    device = ray.train.torch.get_device()
    dtype = autocast_dtype(cfg.train.precision, device)
    torch.manual_seed(cfg.train.seed)

    init_state = ray.get(loop_config["init_state"]) if loop_config.get("init_state") is not None else None
    model = initial_model(cfg, spec, init_state).to(memory_format=preferred_memory_format(device))
    # Frozen BN's statistics never change: DDP need not broadcast them before every forward.
    net = ray.train.torch.prepare_model(model, parallel_strategy_kwargs={"broadcast_buffers": buffers_change(model)})
    model = compile_model(net, cfg.train.compile, device)  # evaluation runs `net`: its image sizes vary
    mode = compile_mode(cfg.train.compile, device)
    if rank == 0 and mode != "none":
        log(f"train: train.compile={mode}: the first steps compile (a minute or two)")
    optimizer = optimizer_for(cfg, net, device)
    scheduler = lr_scheduler(optimizer, cfg.train.lr_policy, cfg.train.iterations, cfg.train.poly_power,
                             cfg.train.step_size)
    scaler = grad_scaler(dtype, device)

    iteration, best = 0, float("-inf")
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as directory:
            state = torch.load(Path(directory) / STATE_FILE, map_location=device, weights_only=True)
            unwrap(model).load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            scaler.load_state_dict(state["scaler"])
            iteration, best = state["iteration"], state["best_miou"]

    val_rows = read_rows(loop_config["val_files"], limit=cfg.data.val_max_images)[rank::world]
    metrics = MetricBuffer(loop_config["run_id"], loop_config["tracking_uri"]) if rank == 0 else None
    nodes = [ray.get_runtime_context().get_node_id()] * world
    if world > 1:
        dist.all_gather_object(nodes, nodes[0])
    if metrics is not None:
        metrics.tag("train_nodes", ",".join(nodes))  # which Ray node each rank ran on
    stream = _batches(ray.train.get_dataset_shard("train"), cfg.train.batch_size, device)
    classes = spec["classes"]
    # Losses stay on the device until a log, evaluation or checkpoint reads them, all at once: no
    # host sync per step. A non-finite one is therefore caught before any checkpoint could keep it.
    pending, pending_lrs, losses, waited, window_start = [], [], [], 0.0, time.perf_counter()
    model.train()
    while iteration < cfg.train.iterations:
        t0 = time.perf_counter()
        batches = [next(stream) for _ in range(cfg.train.iter_size)]
        waited += time.perf_counter() - t0
        pending.append(train_step(model, optimizer, scaler, batches, device, dtype))
        pending_lrs.append(optimizer.param_groups[0]["lr"])
        scheduler.step()
        iteration += 1

        last = iteration == cfg.train.iterations
        log_now = iteration % cfg.train.log_interval == 0 or last
        save = iteration % cfg.train.checkpoint_interval == 0 or last
        evaluate_now = save or iteration % cfg.train.eval_interval == 0
        if log_now or evaluate_now:
            values = window_losses(pending, world)
            bad = next((k for k, v in enumerate(values) if not math.isfinite(v)), None)
            if bad is not None:
                # Every rank reads the same values and stops here: an exception would make Ray Train
                # retry a run that diverges again. The driver reads the record rank 0 leaves.
                if metrics is not None:
                    metrics.flush()
                    storage.write_bytes(loop_config["diverged_uri"], json.dumps(
                        {"iteration": iteration - len(values) + bad + 1, "loss": str(values[bad]),
                         "lr": pending_lrs[bad]}).encode())
                return
            losses += values
            pending, pending_lrs = [], []
        if log_now:
            elapsed = time.perf_counter() - window_start
            if metrics is not None:
                window = {"loss": float(np.mean(losses)), "lr": optimizer.param_groups[0]["lr"],
                          "images_per_s": len(losses) * cfg.train.batch_size * cfg.train.iter_size * world / elapsed,
                          "data_wait_fraction": waited / elapsed}
                metrics.add(window, iteration)
                log(f"train: iteration {iteration}/{cfg.train.iterations} loss {window['loss']:.4f} "
                    f"{window['images_per_s']:.1f} images/s, data wait {100 * window['data_wait_fraction']:.0f}%")
            losses, waited, window_start = [], 0.0, time.perf_counter()

        if evaluate_now:
            cm = evaluate(net, val_rows, spec["num_classes"], device)
            val_miou = cm.miou()
            best = max(best, val_miou)
            if metrics is not None:
                log(f"train: iteration {iteration} val mIoU {val_miou:.4f}")
                per_class = {f"val_iou_{n.replace(' ', '_')}": v for n, v in zip(classes, cm.iou()) if np.isfinite(v)}
                metrics.add({"val_miou": val_miou, "val_pixel_accuracy": cm.pixel_accuracy(),
                             "val_mean_accuracy": cm.mean_accuracy(), **per_class}, iteration)
            model.train()
            window_start = time.perf_counter()  # evaluation time is not training throughput
        if save:
            with tempfile.TemporaryDirectory() as directory:
                if rank == 0:
                    save_model(directory, model, spec)
                    torch.save({"model": unwrap(model).state_dict(), "optimizer": optimizer.state_dict(),
                                "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                                "iteration": iteration, "best_miou": best}, os.path.join(directory, STATE_FILE))
                    np.save(os.path.join(directory, CONFUSION_FILE), cm.matrix)
                    Path(directory, "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
                ray.train.report({"iteration": iteration, "val_miou": val_miou},
                                 checkpoint=ray.train.Checkpoint.from_directory(directory) if rank == 0 else None,
                                 checkpoint_dir_name=f"checkpoint_{iteration:08d}")
            if metrics is not None:
                metrics.flush()
