"""Shared fixtures: the real parts on loopback (S3 endpoint by moto_server, an MLflow server, a local
Ray instance), started with the same functions as the local stack (infra/local_stack.py)."""
from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from infra.local_stack import ARTIFACT_BUCKET, free_port, s3_env, start_mlflow, start_s3, stop

# `make test` runs two pytest workers (pytest-xdist, --dist load: tests go to whichever worker is
# free) so that one worker's waits (Ray starting, servers, subprocesses) are the other's CPU time.
# Each worker starts its own S3 endpoint, MLflow server and local Ray (RAY_ADDRESS=local: never the
# cluster another test records on this machine). The tests that start a cluster of their own address
# it explicitly (the local stack's RAY_ADDRESS, `ray up`'s head in its own RAY_TMPDIR), so they may
# run beside each other. Only the local stack's `ray start --head` writes the machine's record
# (test_infra plants its stale one in a RAY_TMPDIR of its own).
os.environ.setdefault("RAY_ADDRESS", "local")
# Triton kernels (the CRF's CUDA path) run on CPU tensors under Triton's interpreter, which Triton
# chooses when a kernel is decorated, its own library's included: set before anything imports it.
# Nothing else here runs Triton (torch.compile on a CPU generates C++).
os.environ["TRITON_INTERPRET"] = "1"
# Ray's log monitor globs its session's log folder every 0.1 s until the folder holds 1000 files, then
# every 0.5 s; a test session's few hundred files cost 3.0 CPU-s a minute that way, 1.7 at 0.5 s
# (measured, 267 files). Read by every Ray node started from here.
os.environ.setdefault("RAY_LOG_MONITOR_MANY_FILES_THRESHOLD", "0")
# Ray Train's controller polls its workers every 2 s, so each start, finish and failure of a run waits
# up to 2 s for the next poll, idle. The tests' runs are seconds long: at 0.25 s test_train, test_coco
# and test_context_person_part take 140 and 142 s against 153 and 154 s on 2 workers, with no more CPU
# (266 and 272 busy CPU-s against 272 and 279). A poll not answered in time stays pending, it is no
# failure (the health-check timeout is another setting, 10 min). Ray Train hands it to every worker.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.25")


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    """Each pytest worker's share of the cores, for torch's thread pool in it and in what it starts:
    with as many threads as cores in every worker, OpenMP threads spin waiting for a core that the
    other worker holds (measured on 2 cores, test_models, test_train_modes and test_crf_torch on 2
    workers: 418 s and 820 CPU-s at 2 threads each, 157 s and 304 CPU-s at 1). Set before any test
    module imports torch, which reads it then."""
    if hasattr(config, "workerinput"):  # without pytest-xdist torch's default, all cores, is right
        workers = config.workerinput["workercount"]
        os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // workers)))


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory):
    """A moto_server S3 endpoint on 127.0.0.1, reached through the standard AWS variables."""
    proc, url = start_s3(free_port(), tmp_path_factory.mktemp("moto") / "moto.log")
    env = s3_env(url)
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield url
    finally:
        stop(proc)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def save_random_voc_model(directory: Path) -> Path:
    """A small saved VOC model (random weights, logits spread so masks show several classes)."""
    import torch

    from deeplab_core.checkpoint import save_model
    from deeplab_core.data.labels import VOC
    from deeplab_core.models import build_model

    torch.manual_seed(3)
    model = build_model("deeplabv3plus_mobilenetv3", VOC.num_classes, width_mult=0.5)
    classifier = [m for m in model.classifier.modules() if isinstance(m, torch.nn.Conv2d)][-1]
    with torch.no_grad():
        classifier.weight.normal_(0, 30)
    save_model(directory, model, {"name": "deeplabv3plus_mobilenetv3", "num_classes": VOC.num_classes,
                                  "options": {"width_mult": 0.5}, "msc_scales": None, **VOC.to_dict()})
    return directory


def save_colour_voc_model(directory: Path, temperature: float = 3.0) -> Path:
    """A VOC model that sees what the synthetic scenes hold, without training: deeplabv2_vgg16_largefov
    whose convolutions pass the input colour through (centre taps, a bias keeping it above ReLU's zero)
    and whose classifier picks the nearest class colour (each synthetic class's hue, grey for the
    background) at `temperature`. Its class shares follow the scenes' contents and its confidence drops
    on blurred, noisy photos, as a trained model's do."""
    import numpy as np
    import torch

    from deeplab_core.checkpoint import save_model
    from deeplab_core.data.labels import VOC
    from deeplab_core.data.synth import appearance
    from deeplab_core.models import build_model
    from deeplab_core.models.segmentation import input_normalization

    model = build_model("deeplabv2_vgg16_largefov", VOC.num_classes)
    norm = input_normalization(model)
    colours = np.array([(110.0, 110.0, 110.0)] + [appearance(k).rgb for k in range(1, VOC.num_classes)])
    centres = (colours / norm.scale - np.array(norm.mean)) / np.array(norm.std) + 4.0  # as the layers carry it
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    with torch.no_grad():
        for conv in convs[:-1]:
            conv.weight.zero_()
            conv.bias.zero_()
            for c in range(3):
                conv.weight[c, c, conv.kernel_size[0] // 2, conv.kernel_size[1] // 2] = 1.0
        convs[0].bias[:3] = 4.0
        classifier = convs[-1]
        classifier.weight.zero_()
        classifier.weight[:, :3, classifier.kernel_size[0] // 2, classifier.kernel_size[1] // 2] = \
            torch.tensor(temperature * centres, dtype=torch.float32)
        convs[-1].bias.copy_(torch.tensor(-temperature * (centres ** 2).sum(1) / 2, dtype=torch.float32))
    save_model(directory, model, {"name": "deeplabv2_vgg16_largefov", "num_classes": VOC.num_classes, "options": {},
                                  "msc_scales": None, **VOC.to_dict()})
    return directory


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return save_random_voc_model(tmp_path_factory.mktemp("model") / "checkpoint_00000100")


@pytest.fixture(scope="session")
def s3_client(s3_endpoint):
    import boto3

    return boto3.client("s3")


@pytest.fixture(scope="session")
def ray_local(s3_endpoint):
    """A real local Ray instance (4 logical CPUs on 2 cores). Started after the S3 variables are set so workers inherit them."""
    import ray

    from pipelines.cli import init_ray

    init_ray(min_cpus=4, log_to_driver=False)  # logical CPUs: room for Train workers and Ray Data
    yield ray
    ray.shutdown()


def upload_tree(client, local: Path, bucket: str, prefix: str) -> None:
    client.create_bucket(Bucket=bucket)
    for path in local.rglob("*"):
        if path.is_file():
            client.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(local).as_posix()}")


@pytest.fixture(scope="session")
def mlflow_server(s3_endpoint, s3_client, tmp_path_factory):
    """A real `mlflow server` on 127.0.0.1: sqlite backend, artifacts in S3 on the local endpoint."""
    s3_client.create_bucket(Bucket=ARTIFACT_BUCKET)
    work = tmp_path_factory.mktemp("mlflow_server")
    proc, url = start_mlflow(free_port(), work, s3_endpoint, work / "server.log")
    try:
        yield url
    finally:
        stop(proc)


@pytest.fixture
def run(monkeypatch):
    """A CLI as `python -m pipelines.X` runs it, in this process (no interpreter start, no imports):
    `run(main, argv)` returns the exit code, argparse's included. `pipelines.cli.run` points
    sys.stdout at stderr for the CLI's lifetime, which is the process's; here both are put back after
    the test."""
    from pipelines import cli

    monkeypatch.setattr(sys, "stdout", sys.stdout)
    monkeypatch.setattr(cli, "_stdout", None)

    def run_cli(main, argv: list[str]) -> int:
        try:
            return cli.run(main, argv)
        except SystemExit as e:  # argparse's refusals
            return e.code

    return run_cli


_STORE_TEMPLATE: list[Path] = []


def sqlite_store(path: Path) -> str:
    """The URI of a sqlite MLflow store at `path`; when there is none, a new, empty one: a copy of one
    made once per test process (creating MLflow's tables costs ~1.5 CPU-s; the tests make dozens)."""
    if not _STORE_TEMPLATE:
        from mlflow.tracking import MlflowClient

        template = Path(tempfile.mkdtemp(prefix="mlflow-store-")) / "mlflow.db"
        atexit.register(shutil.rmtree, template.parent, True)
        MlflowClient(f"sqlite:///{template}").search_experiments()  # creates and migrates the tables
        _STORE_TEMPLATE.append(template)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(_STORE_TEMPLATE[0], path)
    return f"sqlite:///{path}"


@pytest.fixture()
def tracking(tmp_path, monkeypatch):
    """A fresh sqlite MLflow store for one test, through MLFLOW_TRACKING_URI as the CLIs read it."""
    import mlflow

    uri = sqlite_store(tmp_path / "mlflow.db")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    return uri


def descendants_named(name: str) -> list:
    """This process's descendants whose command line names `name`: the workers and actors of the Ray
    it started (`ray::RayTrainWorker`, `ray::MapWorker(MapBatches(LabelStage))`), not another's."""
    import psutil

    found = []
    for process in psutil.Process().children(recursive=True):
        try:
            if any(name in part for part in process.cmdline()):
                found.append(process)
        except psutil.Error:  # gone meanwhile
            pass
    return found


class BackgroundTraining:
    """`train(cfg)` in a thread, with waits for the checkpoints it writes (for fault injection)."""

    def __init__(self, cfg, timeout: float = 300):
        from pipelines.train import train

        self.result: dict = {}
        self.run_dir = Path(cfg.ray.storage_path) / cfg.tracking.run_name
        self.deadline = time.monotonic() + timeout
        self.thread = threading.Thread(target=lambda: self.result.update(train(cfg)))
        self.thread.start()

    def wait_for_checkpoint(self, iteration: int) -> Path:
        path = self.run_dir / f"checkpoint_{iteration:08d}"
        while not path.exists():
            assert self.thread.is_alive() and time.monotonic() < self.deadline, f"{path.name} never appeared"
            time.sleep(0.05)
        return path

    def join(self, timeout: float = 600) -> dict:
        self.thread.join(timeout)
        return self.result
