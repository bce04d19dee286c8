"""Distributed DeepLab training on Ray Train, fed by Ray Data, tracked in MLflow.

    python pipelines/train.py --config configs/synthetic_tiny.yaml [--set train.iterations=500 ...]
    ray submit ray_cluster.yaml pipelines/train.py --config configs/voc_resnet101_aspp_l.yaml

Reads the Parquet dataset at data.uri, trains on ray.num_workers DDP workers (gloo on CPU, NCCL on
GPU), checkpoints to ray.storage_path (local or s3://) and resumes after a lost worker
(ray.max_failures) or when restarted with the same tracking.run_name. Rank 0 logs to MLflow
(MLFLOW_TRACKING_URI, else a local sqlite store in ./mlruns). The last stdout line is a JSON summary:
run_id, checkpoint, model_uri, val_miou.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import signal
import tempfile
import threading
import time
import warnings

import mlflow
import numpy as np
import ray
import torch
import yaml
from mlflow.tracking import MlflowClient
from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from deeplab_core.checkpoint import load_model, matching_state, read_spec, read_state
from deeplab_core.models import model_options
from pipelines import storage, tracking
from pipelines.cli import emit_summary, init_ray, log, machines, output, run
from pipelines.config import ExperimentConfig, load_config
from pipelines.datasets import load_manifest, median_long_side, read_rows, split_files, train_dataset
from pipelines.model_uri import download_model
from pipelines.reports import confusion_plot, overlay_images
from pipelines.training import (CONFUSION_FILE, DIVERGED_FILE, NonFiniteLoss, initial_model, model_spec,
                                train_loop)
from pipelines.weights import is_torchvision, torchvision_weights_file


def check_model(cfg: ExperimentConfig) -> None:
    """Refuse unknown model options before any worker starts."""
    valid = set(model_options(cfg.model.name)) - {"backbone_weights", "msc_scales"}
    bad = sorted(set(cfg.model.options) - valid)
    if bad:
        raise ValueError(f"model.options: {', '.join(bad)} not valid for {cfg.model.name}; valid: "
                         f"{', '.join(sorted(valid))} (weights: model.init_weights; MSC: model.msc)")


def check_shared_storage(cfg: ExperimentConfig, machine_count: int) -> None:
    """On a cluster whose nodes are on several machines, refuse what only one of them can see, before
    any worker starts: workers on any machine read the data and write checkpoints, and rank 0 logs to
    MLflow from wherever it runs. (Several raylets on one machine share its files.)"""
    if machine_count < 2:
        return
    where = f"the cluster's nodes are on {machine_count} machines"
    if not cfg.ray.shared_filesystem:
        for key, uri in (("data.uri", cfg.data.uri), ("ray.storage_path", cfg.ray.storage_path)):
            if not storage.is_s3(uri):
                raise ValueError(f"{key}={uri} is a local path, but {where}, which cannot share it: use "
                                 f"s3://BUCKET/PREFIX (or ray.shared_filesystem=true when every machine "
                                 f"mounts it at the same place)")
    uri = tracking.tracking_uri(cfg.tracking.uri)
    if tracking.is_local_store(uri):
        raise ValueError(f"MLflow tracking URI {uri} (tracking.uri or MLFLOW_TRACKING_URI) is a local store, "
                         f"but {where} and rank 0 logs from its own: use a tracking server, e.g. "
                         f"MLFLOW_TRACKING_URI=http://HOST:5000")


def warm_start(cfg: ExperimentConfig, spec: dict, run_id: str) -> dict | None:
    """`model.init_from`: fetch the saved model and keep its tensors that match the model to train by
    name and shape (another class count: the classifier's last layers start fresh, as COCO -> VOC in
    the paper); the loaded and skipped counts go to MLflow."""
    if not cfg.model.init_from:
        return None
    directory = download_model(cfg.model.init_from)
    theirs = read_spec(directory).get("options", {}).get("style", "torchvision")
    ours = cfg.model.options.get("style", "torchvision")
    if theirs != ours:  # same tensor shapes, other geometry and input: loading would silently mislead
        raise ValueError(f"model.init_from {cfg.model.init_from} is a {theirs}-style model; set "
                         f"model.options.style={theirs} (this config builds {ours}-style)")
    state = read_state(directory)
    loaded, skipped = matching_state(initial_model(dataclasses.replace(
        cfg, model=dataclasses.replace(cfg.model, init_weights=None)), spec), state)
    if not loaded:
        raise ValueError(f"model.init_from {cfg.model.init_from}: no tensor matches {cfg.model.name} by name and shape")
    log(f"train: init_from {cfg.model.init_from}: {len(loaded)} tensors loaded, {len(skipped)} left as built"
        + (f" ({', '.join(skipped[:4])}{', …' if len(skipped) > 4 else ''})" if skipped else ""))
    MlflowClient().log_batch(run_id, metrics=[mlflow.entities.Metric(k, v, int(time.time() * 1000), 0) for k, v in
                                              (("init_from_loaded", len(loaded)), ("init_from_skipped", len(skipped)))])
    return loaded


def start_run(cfg: ExperimentConfig, run_name: str, manifest: dict) -> str:
    """The MLflow run of this training run: the existing one with the same name (resume), or a new one."""
    experiment_id = tracking.setup(cfg.tracking.experiment, cfg.tracking.uri)
    run_id = tracking.find_run(experiment_id, run_name)
    client = MlflowClient()
    if run_id:
        log(f"train: resuming MLflow run {run_id} ({run_name})")
        client.update_run(run_id, status="RUNNING")
        return run_id
    manifest_hash = hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()[:16]
    run_id = client.create_run(experiment_id, run_name=run_name, tags={
        tracking.RUN_NAME_TAG: run_name, "git_commit": tracking.git_commit(), "ray_version": ray.__version__,
        "torch_version": torch.__version__, "dataset": manifest["dataset"], "dataset_manifest_sha256": manifest_hash,
        "model": cfg.model.name}).info.run_id
    flat = cfg.flat()
    client.log_batch(run_id, params=[mlflow.entities.Param(k, v[:6000]) for k, v in flat.items()])
    return run_id


def log_final_model(cfg: ExperimentConfig, run_id: str, checkpoint_dir: str, val_files: list[str]) -> str:
    """Log the best checkpoint's model (weights-only files for our loaders, plus an mlflow.pytorch
    pt2 export), the resolved config, the confusion matrix plot and val overlays; register it."""
    model, spec = load_model(checkpoint_dir)
    with mlflow.start_run(run_id=run_id):
        for name in ("model.pt", "model.json", "config.yaml"):
            mlflow.log_artifact(os.path.join(checkpoint_dir, name), "deeplab_model")
        confusion = np.load(os.path.join(checkpoint_dir, CONFUSION_FILE))
        with tempfile.TemporaryDirectory() as tmp:
            confusion_plot(confusion, spec["classes"], os.path.join(tmp, "confusion_matrix.png"))
            mlflow.log_artifact(os.path.join(tmp, "confusion_matrix.png"))
            rows = read_rows(val_files, limit=cfg.tracking.overlays)
            for path in overlay_images(model, rows, spec, tmp):
                mlflow.log_artifact(path, "overlays")
        example = torch.zeros(1, 3, 64, 64)
        # Requirements given, not inferred: inference imports the model in a subprocess (~30 s on 2 cores).
        # MLflow's serving check (reload the export, predict the example; a failure only warns) is left
        # to the tests: it cost ~4.5 s of every run.
        info = mlflow.pytorch.log_model(model, name="model", input_example=example.numpy(),
                                        pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
                                        registered_model_name=cfg.tracking.register_model or None,
                                        serialization_format="pt2", validate_serving_input=False)
    if cfg.tracking.register_model and info.registered_model_version:
        return f"models:/{cfg.tracking.register_model}/{info.registered_model_version}"
    return f"runs:/{run_id}/deeplab_model"


def fit_and_release(trainer: TorchTrainer):
    """`trainer.fit()`, then the driver's Ctrl-C handler put back. Ray Train's handler holds the run's
    controller actor: left installed, the finished run's controller and its dataset actors stay
    alive (each a process polling its peers) until the driver exits or fits again."""
    main = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGINT) if main else None
    try:
        return trainer.fit()
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


def train(cfg: ExperimentConfig) -> dict:
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, uri=storage.absolute(cfg.data.uri)),
                              model=dataclasses.replace(cfg.model, init_weights=cfg.model.init_weights and (
                                  cfg.model.init_weights if is_torchvision(cfg.model.init_weights)
                                  else storage.absolute(cfg.model.init_weights))))
    check_model(cfg)
    if is_torchvision(cfg.model.init_weights):
        torchvision_weights_file(cfg.model.init_weights)  # here, once, before any worker starts
    if not cfg.ray.use_gpu and cfg.model.options.get("bn") == "sync":
        raise ValueError("model.options.bn=sync needs GPUs (SyncBatchNorm); use bn=plain or frozen on CPU")
    manifest = load_manifest(cfg.data.uri)
    train_files = split_files(cfg.data.uri, manifest, cfg.data.train_split)
    val_files = split_files(cfg.data.uri, manifest, cfg.data.val_split)
    init_ray(min_cpus=cfg.ray.num_workers * cfg.ray.cpus_per_worker + 1)
    check_shared_storage(cfg, len(machines()))
    run_name = cfg.tracking.run_name or f"{cfg.model.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_id = start_run(cfg, run_name, manifest)
    spec = model_spec(cfg, manifest, median_long_side(train_files))
    init_state = warm_start(cfg, spec, run_id)

    samples = cfg.train.iterations * cfg.train.batch_size * cfg.train.iter_size * cfg.ray.num_workers
    rows = manifest["splits"][cfg.data.train_split]["rows"]
    passes = -(-samples // rows) + 1  # +1: drop_last and uneven shards never run the stream dry
    fs, storage_path = storage.resolve(cfg.ray.storage_path)
    resources = {"CPU": cfg.ray.cpus_per_worker, **({"GPU": cfg.ray.gpus_per_worker} if cfg.ray.use_gpu else {})}
    data_options = DataConfig.default_ingest_options()
    if cfg.ray.data_cpus:
        data_options.resource_limits = data_options.resource_limits.copy(cpu=cfg.ray.data_cpus)
    # Where rank 0 records a diverged loss; an earlier attempt's record must not fail a resumed run.
    diverged_uri = storage.join(storage.absolute(cfg.ray.storage_path), run_name, DIVERGED_FILE)
    storage.delete(diverged_uri)
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={"config": cfg.to_dict(), "spec": spec, "run_id": run_id,
                           "val_files": val_files, "tracking_uri": mlflow.get_tracking_uri(),
                           "diverged_uri": diverged_uri,
                           # the matching tensors, once through the object store: workers on any node
                           "init_state": init_state and ray.put(init_state)},
        scaling_config=ScalingConfig(num_workers=cfg.ray.num_workers, use_gpu=cfg.ray.use_gpu,
                                     resources_per_worker=resources,
                                     placement_strategy=cfg.ray.placement_strategy),
        run_config=RunConfig(name=run_name, storage_path=storage_path, storage_filesystem=fs,
                             failure_config=FailureConfig(max_failures=cfg.ray.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=cfg.ray.keep_checkpoints,
                                                                checkpoint_score_attribute="val_miou",
                                                                checkpoint_score_order="max")),
        datasets={"train": train_dataset(train_files, cfg.data.crop_size, cfg.data.scale_range, cfg.data.flip,
                                         passes=passes, seed=cfg.train.seed)},
        dataset_config=DataConfig(datasets_to_split=["train"], execution_options=data_options),
    )
    log(f"train: {cfg.model.name} on {cfg.ray.num_workers} worker(s), {cfg.train.iterations} iterations, "
        f"run {run_name} (MLflow {run_id})")
    result = fit_and_release(trainer)
    client = MlflowClient()
    if result.error:
        client.set_terminated(run_id, "FAILED")
        raise RuntimeError(f"training failed: {result.error}")
    if storage.exists(diverged_uri):
        client.set_terminated(run_id, "FAILED")
        diverged = json.loads(storage.read_bytes(diverged_uri))
        raise NonFiniteLoss(
            f"train: the loss became {diverged['loss']} at iteration {diverged['iteration']} (learning rate "
            f"{diverged['lr']:.3g}); training stopped, MLflow run {run_id} marked FAILED, nothing registered, "
            f"earlier checkpoints kept. Likely causes: a learning rate too high for "
            f"train.optimizer={cfg.train.optimizer}, fp16 overflow, or model.options.bn=frozen without "
            f"pretrained weights (model.init_weights)")
    best, metrics = max(result.best_checkpoints, key=lambda cm: cm[1]["val_miou"])
    checkpoint = ("s3://" if storage.is_s3(cfg.ray.storage_path) else "") + best.path
    try:
        with best.as_directory() as directory:
            model_uri = log_final_model(cfg, run_id, directory, val_files)
        client.set_terminated(run_id, "FINISHED")
    except Exception as e:  # MLflow down at the very end: the trained model is safe in its checkpoint
        model_uri = checkpoint
        warnings.warn(f"MLflow: final model not logged ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
                      f"the model is the checkpoint {checkpoint} (a --model for segment and evaluate)",
                      RuntimeWarning, stacklevel=2)
    return {"run_id": run_id, "run_name": run_name, "checkpoint": checkpoint, "model_uri": model_uri,
            "val_miou": metrics["val_miou"], "iterations": result.metrics["iteration"]}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="YAML preset from configs/ (default: built-in defaults)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set train.iterations=500 --set ray.num_workers=4 "
                        "(values parsed as YAML; repeatable)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    cfg = load_config(args.config, args.set)
    if args.print_config:
        output(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        return 0
    summary = train(cfg)
    log(f"train: done, val mIoU {summary['val_miou']:.4f}, model {summary['model_uri']}")
    emit_summary(summary)
    return 0


if __name__ == "__main__":
    raise SystemExit(run(main))
