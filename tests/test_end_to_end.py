"""The whole product on the local real stack (infra/local_stack.py): a Ray cluster of two nodes, an
MLflow server with S3 artifacts and an S3 endpoint, driven only through the CLIs as a user would:
synth -> preprocess into s3:// -> train (submitted with `ray job submit`) on 2 workers on the 2 nodes
-> register -> segment an s3:// bucket with the models:/ URI -> evaluate -> compare from the server.
Secrets planted in every environment are then looked for in everything written."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psutil
import pyarrow.parquet as pq
import pytest
from mlflow.tracking import MlflowClient
from ray._common.utils import get_ray_address_file

from infra import local_stack
from tests.conftest import upload_tree

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


# Secret values planted in the environment of the stack (so of every Ray node and the MLflow server)
# and of every CLI; the endpoint takes any key, so the planted AWS ones are the ones in use there.
TOKEN = uuid.uuid4().hex
SECRETS = {"AWS_SESSION_TOKEN": f"planted-session-{TOKEN}", "MLFLOW_TRACKING_PASSWORD": f"planted-mlflow-{TOKEN}",
           "DATABASE_PASSWORD": f"planted-db-{TOKEN}"}
CLI_SECRETS = {**SECRETS, "AWS_ACCESS_KEY_ID": f"AKIAPLANTED{TOKEN[:8].upper()}",
               "AWS_SECRET_ACCESS_KEY": f"planted-secret-{TOKEN}"}


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("stack"))
    up = subprocess.run([sys.executable, "-m", "infra.local_stack", "up", "--dir", directory, "--s3-port", "0",
                         "--mlflow-port", "0", "--ray-port", "0", "--dashboard-port", "0"],
                        capture_output=True, text=True, timeout=300, cwd=ROOT, env={**os.environ, **SECRETS})
    try:
        assert up.returncode == 0, up.stderr[-3000:]
        yield directory, dict(line.removeprefix("export ").split("=", 1) for line in up.stdout.splitlines())
    finally:
        local_stack.down(directory, log=lambda _: None)


def last_json(stdout: str) -> dict:
    """The CLI's summary: its last JSON line (`ray job submit` prints its own lines after the job's)."""
    return json.loads([line for line in stdout.splitlines() if line.startswith("{")][-1])


def _tree(name: str, directory: str) -> list[psutil.Process]:
    root = psutil.Process(local_stack.Stack.load(directory).pids[name])
    return [root, *root.children(recursive=True)]


def _listening(process: psutil.Process) -> list:
    try:
        return [c for c in process.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]
    except psutil.Error:
        return []


def test_the_pipeline_on_the_local_stack(stack, tmp_path):
    directory, exported = stack
    env = {**os.environ, **exported, **CLI_SECRETS, "PYTHONPATH": str(ROOT)}
    started, printed = time.time(), []

    def cli(*argv: str, timeout: float = 600) -> dict:
        result = subprocess.run(list(argv), capture_output=True, text=True, env=env, cwd=ROOT, timeout=timeout)
        printed.append(result.stdout + result.stderr)
        assert result.returncode == 0, f"{argv[:4]}: {result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        return last_json(result.stdout)

    # The servers we configure listen on loopback only. (Ray's own gRPC servers bind every
    # interface whatever --node-ip-address says; docs/reliability.md.)
    for name in ("s3", "mlflow"):
        assert {c.laddr.ip for p in _tree(name, directory) for c in _listening(p)} == {"127.0.0.1"}, name
    dashboard = int(exported["RAY_API_SERVER_ADDRESS"].rsplit(":", 1)[1])
    assert {c.laddr.ip for p in _tree("ray-head", directory) for c in _listening(p)
            if c.laddr.port == dashboard} == {"127.0.0.1"}

    status = json.loads(subprocess.run([sys.executable, "-m", "infra.local_stack", "status", "--dir", directory],
                                       capture_output=True, text=True, cwd=ROOT).stdout)
    assert status["running"] and status["ray_nodes"] == 2
    assert all(url.startswith("http://127.0.0.1:") for url in status["urls"].values())
    again = subprocess.run([sys.executable, "-m", "infra.local_stack", "up", "--dir", directory],
                           capture_output=True, text=True, cwd=ROOT)
    assert again.returncode == 2 and "already running" in again.stderr

    s3 = local_stack.local_s3_client(exported["AWS_ENDPOINT_URL"])
    py = sys.executable
    cli(py, "pipelines/synth.py", "--dataset", "voc", "--out", str(tmp_path / "raw"), "--train", "16", "--val", "6",
        "--seed", "5", "--size", "64x48", "--classes", "5", "--min-scale", "0.3")
    upload_tree(s3, tmp_path / "raw", "raw", "voc")
    upload_tree(s3, tmp_path / "raw" / "VOCdevkit" / "VOC2012" / "JPEGImages", "photos", "2026-11-24")
    for bucket in ("data", "checkpoints", "photos-seg"):
        s3.create_bucket(Bucket=bucket)

    prep = cli(py, "pipelines/preprocess.py", "--dataset", "voc", "--root", "s3://raw/voc", "--out", "s3://data/voc")
    assert prep["rows"] == {"train": 16, "val": 6} and prep["errors"] == 0

    # As on a cluster: the project is installed on every node, the job names the module to run.
    trained = cli(str(Path(py).parent / "ray"), "job", "submit", "--",
                  "python", "-m", "pipelines.train", "--config", "configs/synthetic_tiny.yaml",
                  "--set", "data.uri=s3://data/voc", "--set", "data.train_split=train", "--set", "data.crop_size=48",
                  "--set", "train.batch_size=4", "--set", "train.iterations=6", "--set", "train.checkpoint_interval=3",
                  "--set", "train.eval_interval=3", "--set", "ray.placement_strategy=STRICT_SPREAD",
                  "--set", "ray.storage_path=s3://checkpoints/runs", "--set", "tracking.experiment=e2e",
                  "--set", "tracking.register_model=deeplab-e2e", "--set", "tracking.run_name=e2e",
                  "--set", "tracking.overlays=1", timeout=900)
    assert trained["iterations"] == 6 and trained["model_uri"] == "models:/deeplab-e2e/1"
    assert trained["checkpoint"].startswith("s3://checkpoints/runs/e2e/checkpoint_")
    client = MlflowClient(exported["MLFLOW_TRACKING_URI"])
    run = client.get_run(trained["run_id"])
    assert run.info.status == "FINISHED"
    history = {m.step: m.value for m in client.get_metric_history(trained["run_id"], "val_miou")}
    assert sorted(history) == [3, 6] and trained["val_miou"] in history.values()  # the best checkpoint's
    nodes = run.data.tags["train_nodes"].split(",")
    assert len(nodes) == 2 and len(set(nodes)) == 2, "the two workers did not run on two nodes"
    artifacts = [o["Key"] for o in s3.list_objects_v2(Bucket=local_stack.ARTIFACT_BUCKET)["Contents"]]
    assert any(k.endswith("deeplab_model/model.pt") for k in artifacts)
    checkpoints = [o["Key"] for o in s3.list_objects_v2(Bucket="checkpoints", Prefix="runs/e2e/")["Contents"]]
    assert "runs/e2e/checkpoint_00000006/model.pt" in checkpoints

    seg = cli(py, "pipelines/segment.py", "--model", trained["model_uri"], "--input", "s3://photos/2026-11-24",
              "--output", "s3://photos-seg/2026-11-24")
    assert (seg["images"], seg["errors"], seg["skipped"]) == (22, 0, 0)
    masks = [o["Key"] for o in s3.list_objects_v2(Bucket="photos-seg", Prefix="2026-11-24/masks/")["Contents"]]
    assert len([k for k in masks if k.endswith(".png")]) == 22
    summary_keys = [o["Key"] for o in s3.list_objects_v2(Bucket="photos-seg", Prefix="2026-11-24/summary/")["Contents"]
                    if o["Key"].endswith(".parquet")]
    rows = sum(pq.read_table(io.BytesIO(s3.get_object(Bucket="photos-seg", Key=k)["Body"].read())).num_rows
               for k in summary_keys)
    assert rows == 22

    scored = cli(py, "pipelines/evaluate.py", "--model", trained["model_uri"], "--data", "s3://data/voc",
                 "--split", "val")
    assert scored["images"] == 6 and scored["mlflow_run_id"] == trained["run_id"]
    masks_scored = cli(py, "pipelines/evaluate.py", "--dataset", "voc", "--gt-root", "s3://raw/voc", "--split", "val",
                       "--pred", "s3://photos-seg/2026-11-24/masks")
    # The nightly masks (model + CRF) score as the model evaluation after the CRF does.
    assert masks_scored["miou"] == pytest.approx(scored["miou_after_crf"], abs=0.01)

    table = cli(py, "pipelines/compare.py", "--experiment", "e2e", "--format", "csv")
    (row,) = table["rows"]
    assert row["run_id"] == trained["run_id"]
    assert row["miou"] == pytest.approx(scored["miou_before_crf"]) and row["miou_crf"] == pytest.approx(scored["miou"])
    assert {a.path for a in client.list_artifacts(table["comparison_run_id"])} >= {"comparison.csv", "comparison.md"}

    # Secrets never reach what the product writes: files (MLflow store, logs of every service,
    # Ray's session logs), every object in the S3 endpoint (artifacts, checkpoints, outputs), output.
    # Not scanned: the S3 endpoint's own request log. MLflow hands out presigned URLs, which carry
    # the session token by AWS's design, and the endpoint logs each URL it serves.
    files = [p for root in (Path(directory), tmp_path) for p in root.rglob("*")
             if p.is_file() and p.name != "s3.log"]
    files += [p for session in Path("/tmp/ray").glob("session_2*") if session.stat().st_mtime >= started - 600
              for p in (session / "logs").rglob("*") if p.is_file()]
    blobs = [(str(p), p.read_bytes()) for p in files]
    blobs += [(f"s3://{b['Name']}/{o['Key']}", s3.get_object(Bucket=b["Name"], Key=o["Key"])["Body"].read())
              for b in s3.list_buckets()["Buckets"]
              for o in s3.list_objects_v2(Bucket=b["Name"]).get("Contents", [])]
    assert any(name.endswith("mlflow.db") for name, _ in blobs) and any(name.endswith(".pt") for name, _ in blobs)
    for value in CLI_SECRETS.values():
        assert not [name for name, data in blobs if value.encode() in data], f"secret {value[:12]}… written"
        assert not [text for text in printed if value in text], "secret printed by a CLI"

    stack_record = local_stack.Stack.load(directory)
    pids, port = stack_record.pids, str(stack_record.ray_port)
    ray_record = Path(get_ray_address_file(None))
    assert ray_record.read_text().strip().rpartition(":")[2] == port  # `ray start --head` records the cluster...
    assert local_stack.down(directory, log=lambda _: None) == 4
    assert not ray_record.exists() or ray_record.read_text().strip().rpartition(":")[2] != port  # ...down forgets it
    assert not any(local_stack.service_running(pid, name) for name, pid in pids.items())
