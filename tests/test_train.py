"""Distributed training on the real local stack: Ray Train + Ray Data + MLflow (+ S3, + 2 nodes)."""
from __future__ import annotations

import json
import re
import time
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from deeplab_core.checkpoint import load_model, matching_state, read_state
from deeplab_core.data.codec import decode_image, decode_label
from deeplab_core.data.synth import write_voc
from deeplab_core.inference import predict_probabilities
from deeplab_core.metrics import ConfusionMatrix
from deeplab_core.models import build_model
from pipelines.config import load_config
from pipelines.datasets import load_manifest, read_rows, split_files
from pipelines.preprocess import preprocess
from pipelines.cli import user_error
from pipelines.train import check_shared_storage, train
from pipelines.train import main as train_main
from pipelines.training import NonFiniteLoss
from tests.conftest import BackgroundTraining, descendants_named, sqlite_store
from tests.outage_proxy import OutageProxy

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "synthetic_tiny.yaml"


@pytest.fixture(scope="module")
def dataset(ray_local, tmp_path_factory):
    base = tmp_path_factory.mktemp("train_data")
    write_voc(base / "raw", train=16, val=6, seed=11, size=(64, 48))
    preprocess("voc", str(base / "raw"), str(base / "pq"), splits=["train", "val"])
    return str(base / "pq")


def tiny_config(dataset: str, tmp_path: Path, *overrides: str):
    return load_config(str(TINY), [
        f"data.uri={dataset}", "data.train_split=train", "data.crop_size=48", f"ray.storage_path={tmp_path / 'runs'}",
        f"tracking.uri={sqlite_store(tmp_path / 'mlruns' / 'mlflow.db')}", "tracking.experiment=test-train",
        "tracking.register_model=null", "tracking.overlays=2", "train.batch_size=4", *overrides])


def initial_miou(cfg, dataset: str) -> float:
    """mIoU of the model as every worker builds it before the first step (same seed, then the
    `model.init_from` tensors that match)."""
    torch.manual_seed(cfg.train.seed)
    manifest = load_manifest(dataset)
    model = build_model(cfg.model.name, manifest["num_classes"], **cfg.model.options).eval()
    if cfg.model.init_from:
        model.load_state_dict(matching_state(model, read_state(cfg.model.init_from))[0], strict=False)
    cm = ConfusionMatrix(manifest["num_classes"])
    for row in read_rows(split_files(dataset, manifest, cfg.data.val_split)):
        cm.update(predict_probabilities(model, decode_image(row["image"])).argmax(0), decode_label(row["label"]))
    return cm.miou()


def metric_steps(tracking_uri: str, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in MlflowClient(tracking_uri).get_metric_history(run_id, key))


@pytest.mark.slow
def test_two_workers_learn_from_a_warm_start_and_mlflow_holds_the_run(dataset, tmp_path):
    """Warm-started from a model of another class count (COCO -> VOC in the paper): every tensor but
    the classifier's last ones loaded, the counts logged; the two workers learn from there."""
    source = saved_model(tmp_path / "coco", 6, seed=5)
    # val_miou is the same at iterations 10, 20, 30 and 40 (measured): 20 show learning and two evaluations.
    cfg = tiny_config(dataset, tmp_path, "train.iterations=20", "train.checkpoint_interval=10",
                      "train.eval_interval=10", "train.log_interval=5", "tracking.run_name=two-workers",
                      f"model.init_from={source}")
    summary = train(cfg)
    assert summary["iterations"] == 20 and summary["run_name"] == "two-workers"
    assert summary["val_miou"] > initial_miou(cfg, dataset) + 0.05
    uri = cfg.tracking.uri
    run = MlflowClient(uri).get_run(summary["run_id"])
    assert run.data.metrics["init_from_loaded"] > 10 * run.data.metrics["init_from_skipped"] > 0
    assert run.info.status == "FINISHED"
    assert run.data.params["model.name"] == cfg.model.name and run.data.params["ray.num_workers"] == "2"
    assert {"git_commit", "ray_version", "torch_version", "dataset_manifest_sha256"} <= set(run.data.tags)
    assert len(run.data.tags["train_nodes"].split(",")) == 2
    assert metric_steps(uri, summary["run_id"], "val_miou") == [10, 20]
    assert metric_steps(uri, summary["run_id"], "loss") == list(range(5, 21, 5))
    assert "val_iou_background" in run.data.metrics and "data_wait_fraction" in run.data.metrics
    mlflow.set_tracking_uri(uri)
    artifacts = {a.path for a in MlflowClient(uri).list_artifacts(summary["run_id"], "deeplab_model")}
    assert {"deeplab_model/model.pt", "deeplab_model/model.json", "deeplab_model/config.yaml"} <= artifacts
    assert len(MlflowClient(uri).list_artifacts(summary["run_id"], "overlays")) == 2
    # The pt2 export serves: MLflow's own check of it is off in training (it only warned).
    served = mlflow.pyfunc.load_model(f"runs:/{summary['run_id']}/model")
    assert served.predict(np.zeros((1, 3, 64, 64), np.float32)).shape == (1, 21, 64, 64)
    model, spec = load_model(summary["checkpoint"])
    assert spec["name"] == cfg.model.name and spec["num_classes"] == 21
    assert spec["trained_long_side"] == 64  # the 64×48 training images: `segment --scale auto` runs there
    assert summary["model_uri"] == f"runs:/{summary['run_id']}/deeplab_model"


@pytest.mark.slow
def test_an_mlflow_outage_a_killed_worker_and_a_restarted_run_lose_no_step(dataset, tmp_path, mlflow_server):
    """Faults one after another in one run, MLflow reached through a proxy: the tracking server down
    from checkpoint 4 to checkpoint 8 while training goes on; then, once the metrics kept meanwhile
    reached the server, a worker killed (Ray Train restarts the group from the last checkpoint). The
    finished run started again by name with more iterations goes on from its last checkpoint in the
    same MLflow run. Every step is logged once."""
    server = OutageProxy(int(mlflow_server.rsplit(":", 1)[1]))
    try:
        overrides = ["train.checkpoint_interval=4", "train.eval_interval=4", "train.log_interval=1",
                     "ray.max_failures=1", "tracking.run_name=fault", f"tracking.uri={server.url}"]
        cfg = tiny_config(dataset, tmp_path, "train.iterations=20", *overrides)
        training = BackgroundTraining(cfg)
        run_dir = training.wait_for_checkpoint(4).parent
        server.outage(None)  # checkpoint 8 (at least) is reported without the server
        training.wait_for_checkpoint(8)
        server.restore()
        # Rank 0 keeps what the server missed until a flush succeeds: a kill before that would lose it.
        client = MlflowClient(mlflow_server)
        (run,) = client.search_runs([client.get_experiment_by_name(cfg.tracking.experiment).experiment_id],
                                    "attributes.run_name = 'fault'")
        run_id = run.info.run_id
        while max(metric_steps(mlflow_server, run_id, "loss"), default=0) < 8:
            assert training.thread.is_alive(), "training ended before the kept metrics reached the server"
            time.sleep(0.05)
        assert not (run_dir / "checkpoint_00000020").exists()
        victims = descendants_named("RayTrainWorker")
        assert len(victims) == 2
        victims[-1].kill()  # SIGKILL, as a node or OOM killer would
        result = training.join()
        assert result["iterations"] == 20 and result["run_id"] == run_id and result["model_uri"].startswith("runs:/")
        assert (run_dir / "checkpoint_00000020").exists()
        steps = metric_steps(mlflow_server, run_id, "loss")
        assert steps == list(range(1, 21)), "metric history has a gap or a duplicate step"
        assert metric_steps(mlflow_server, run_id, "val_miou") == list(range(4, 21, 4))

        again = train(tiny_config(dataset, tmp_path, "train.iterations=24", *overrides))
        assert again["run_id"] == run_id and again["iterations"] == 24
        assert metric_steps(mlflow_server, run_id, "loss") == list(range(1, 25))
    finally:
        server.stop()


@pytest.mark.parametrize("overrides, message", [
    (["train.iterations=abc"], "train.iterations must be an integer, got 'abc'"),
    (["model.name=deeplabv9"], "model.name: 'deeplabv9' is not valid; valid: deeplabv2_mobilenetv3_aspp_l"),
    (["train.lr_policy=cosine"], "train.lr_policy: 'cosine' is not valid; valid: poly, step"),
    (["train.bogus=1"], "unknown key train.bogus; valid: iterations"),
    (["model.options={width: 3}"], "model.options: width not valid for deeplabv3plus_mobilenetv3; valid: bn"),
    (["data.uri=/nonexistent/data"], "/nonexistent/data: no manifest.json"),
    (["train.amp=false"], "train.amp was replaced by train.precision: auto|fp32|fp16|bf16"),
    (["model.options={width_mult: 0.5, bn: frozen}"], "model.options.bn=frozen needs pretrained weights"),
    (["train.precision=fp8"], "train.precision: 'fp8' is not valid; valid: auto, fp32, fp16, bf16"),
])
def test_bad_config_is_one_line_before_any_worker(run, capsys, overrides, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = run(train_main, ["--config", str(TINY), *[a for o in overrides for a in ("--set", o)]])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
    assert not list(tmp_path.iterdir())  # refused before Ray, MLflow or any output


def test_a_cluster_on_several_machines_refuses_paths_only_one_machine_has(tmp_path, monkeypatch):
    """Nodes on two machines: local data, checkpoints or a sqlite store are refused (one line naming
    the key and what to use); several raylets of one machine, s3:// with a tracking server, and local
    paths on a shared file system (not sqlite) are accepted."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    shared = ["data.uri=s3://data/voc", "ray.storage_path=s3://runs/deeplab", "tracking.uri=http://mlflow:5000"]
    cases = [
        (["ray.storage_path=/tmp/runs", *shared[::2]], "ray.storage_path=/tmp/runs is a local path, but the "
         "cluster's nodes are on 2 machines, which cannot share it: use s3://BUCKET/PREFIX"),
        ([f"data.uri={tmp_path}", *shared[1:]], f"data.uri={tmp_path} is a local path"),
        (shared[:2] + ["tracking.uri=sqlite:////tmp/mlflow.db"], "MLflow tracking URI sqlite:////tmp/mlflow.db "
         "(tracking.uri or MLFLOW_TRACKING_URI) is a local store, but the cluster's nodes are on 2 machines"),
        (["ray.shared_filesystem=true", f"data.uri={tmp_path}", "ray.storage_path=/nfs/runs",
          "tracking.uri=file:///nfs/mlruns"], "tracking URI file:///nfs/mlruns"),
    ]
    for overrides, message in cases:
        cfg = load_config(str(TINY), overrides)
        with pytest.raises(ValueError, match=re.escape(message)):
            check_shared_storage(cfg, 2)
        check_shared_storage(cfg, 1)  # one machine, however many raylets
    check_shared_storage(load_config(str(TINY), shared), 2)
    check_shared_storage(load_config(str(TINY), ["ray.shared_filesystem=true", f"data.uri={tmp_path}",
                                                 "ray.storage_path=/nfs/runs", "tracking.uri=http://mlflow:5000"]), 2)


def test_empty_training_split_is_refused(dataset, tmp_path):
    manifest = json.loads(Path(dataset, "manifest.json").read_text())
    manifest["splits"]["train"]["rows"] = 0
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="split 'train' is empty"):
        train(tiny_config(str(empty), tmp_path))
    with pytest.raises(ValueError, match="no split 'nope'; available: train, val"):
        train(tiny_config(dataset, tmp_path, "data.train_split=nope"))


def test_a_diverging_loss_stops_training_at_once(dataset, tmp_path):
    """base_lr=1e30: the loss turns non-finite within a few steps; every rank stops there (returning,
    not raising, so Ray Train does not retry), the run is FAILED, nothing is registered, and the
    CLI's error is one line."""
    cfg = tiny_config(dataset, tmp_path, "train.optimizer=sgd", "train.base_lr=1e30", "train.iterations=40",
                      "train.eval_interval=2", "train.checkpoint_interval=2", "ray.max_failures=3",
                      "tracking.register_model=diverging", "tracking.run_name=diverging")
    with pytest.raises(NonFiniteLoss) as e:
        train(cfg)
    message = str(user_error(e.value))
    assert "\n" not in message and message.startswith("train: the loss became ")
    iteration = int(message.split(" at iteration ")[1].split()[0])
    lr = float(message.split("(learning rate ")[1].split(")")[0])
    assert 1 <= iteration < 40 and 1e29 < lr <= 1e30 and "marked FAILED" in message  # measured: iteration 2
    client = MlflowClient(cfg.tracking.uri)
    run_id = message.split("MLflow run ")[1].split()[0]
    assert client.get_run(run_id).info.status == "FAILED"
    assert not client.search_registered_models("name='diverging'")
    record = json.loads((Path(cfg.ray.storage_path) / "diverging" / "diverged.json").read_text())
    assert record["iteration"] == iteration and record["loss"] in ("nan", "inf", "-inf")


@pytest.mark.parametrize("precision", ["auto", "fp32", "fp16", "bf16"])
def test_every_precision_takes_a_finite_step_on_cpu(precision):
    from deeplab_core.train_step import autocast_dtype, train_step

    device = torch.device("cpu")
    dtype = autocast_dtype(precision, device)
    assert dtype == {"auto": None, "fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
    torch.manual_seed(0)
    model = build_model("deeplabv3plus_mobilenetv3", 3, width_mult=0.5)
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    scaler = torch.amp.GradScaler("cpu", enabled=dtype == torch.float16)
    batch = {"image": torch.randint(0, 256, (2, 48, 48, 3), dtype=torch.uint8),
             "label": torch.randint(0, 3, (2, 48, 48), dtype=torch.uint8)}
    for _ in range(20):  # fp16: the loss scaler skips the first steps, whose gradients overflow
        loss = train_step(model, optimizer, scaler, batch, device, dtype)
        assert loss.dtype == torch.float32 and torch.isfinite(loss)
        if any(not torch.equal(a, b) for a, b in zip(before, model.parameters())):
            break
    else:
        raise AssertionError(f"{precision}: 20 steps left the weights unchanged")


def test_accumulated_micro_batches_give_the_big_batch_gradient():
    """train.iter_size: 2 micro-batches with different numbers of ignored pixels give exactly the
    gradient of one batch of both (a model without BN statistics: frozen BN, eval mode)."""
    from deeplab_core.train_step import train_step

    torch.manual_seed(0)
    model = build_model("deeplabv3plus_mobilenetv3", 3, width_mult=0.5, bn="frozen").eval()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # gradients only
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    images = torch.randint(0, 256, (4, 40, 40, 3), dtype=torch.uint8)
    labels = torch.randint(0, 3, (4, 40, 40), dtype=torch.uint8)
    labels[0, :30] = 255  # the first micro-batch has far fewer valid pixels than the second
    cpu = torch.device("cpu")

    whole = train_step(model, optimizer, scaler, {"image": images, "label": labels}, cpu)
    big = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    parts = train_step(model, optimizer, scaler, [{"image": images[:2], "label": labels[:2]},
                                                  {"image": images[2:], "label": labels[2:]}], cpu)
    accumulated = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    assert parts.item() == pytest.approx(whole.item(), rel=1e-5)
    assert len(big) == len(accumulated) > 10
    for a, b in zip(big, accumulated):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def saved_model(directory: Path, num_classes: int, seed: int) -> Path:
    from deeplab_core.checkpoint import save_model

    torch.manual_seed(seed)
    save_model(directory, build_model("deeplabv3plus_mobilenetv3", num_classes, width_mult=0.5),
               {"name": "deeplabv3plus_mobilenetv3", "num_classes": num_classes, "options": {"width_mult": 0.5},
                "msc_scales": None})
    return directory


def test_init_from_loads_every_matching_tensor(tmp_path):
    """Same class count: everything loaded, the same predictions. Another class count (COCO -> VOC):
    all but the classifier's last layer loaded, that layer fresh."""
    from pipelines.training import initial_model

    cfg = load_config(str(TINY), ["data.uri=unused"])
    spec = {"name": "deeplabv3plus_mobilenetv3", "num_classes": 21, "options": {"width_mult": 0.5}, "msc_scales": None}
    source_dir = saved_model(tmp_path / "same", 21, seed=5)
    source, _ = load_model(source_dir)
    loaded, skipped = matching_state(initial_model(cfg, spec), read_state(source_dir))
    assert not skipped
    torch.manual_seed(99)  # another init: only init_from can make the two equal
    warm = initial_model(cfg, spec, loaded).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(warm(x), source(x), rtol=0, atol=0)

    other_dir = saved_model(tmp_path / "coco", 6, seed=5)
    loaded, skipped = matching_state(initial_model(cfg, spec), read_state(other_dir))
    assert skipped and all(name.startswith("classifier.") for name in skipped)
    assert len(loaded) > 10 * len(skipped)  # backbone and head but the last layer
    warm = initial_model(cfg, spec, loaded)
    for name, tensor in warm.state_dict().items():
        if name in loaded:
            assert torch.equal(tensor, loaded[name]), name
