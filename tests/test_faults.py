"""Faults on the real parts: the S3 endpoint gone for ~10 s or for good (through a proxy that
refuses connections), a segmentation actor killed mid-run. (Faults during training, the MLflow server
down and a training worker killed: tests/test_train.py.)"""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pyarrow.parquet as pq
import pytest

from deeplab_core.data.synth import write_voc
from tests.conftest import descendants_named, upload_tree
from tests.outage_proxy import OutageProxy

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def cli(args: list[str], env: dict, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, cwd=ROOT, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "RAY_ADDRESS": "local", **env})


def summary(result: subprocess.CompletedProcess) -> dict:
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture()
def proxy(s3_endpoint):
    p = OutageProxy(int(s3_endpoint.rsplit(":", 1)[1]))
    yield p
    p.stop()


@pytest.fixture(scope="module")
def raw_voc(s3_client, tmp_path_factory):
    raw = tmp_path_factory.mktemp("faults_raw")
    write_voc(raw, train=16, val=6, seed=9, size=(64, 48), classes=5)
    upload_tree(s3_client, raw, "faults-raw", "voc")
    return raw


def test_preprocess_rides_out_a_10s_s3_outage(raw_voc, proxy, s3_client):
    s3_client.create_bucket(Bucket="faults-pq")
    proxy.outage_at_request(25, seconds=10)  # past the listing: inside the Ray tasks' reads and writes
    start = time.monotonic()
    out = summary(cli(["pipelines.preprocess", "--dataset", "voc", "--root", "s3://faults-raw/voc",
                       "--out", "s3://faults-pq/voc", "--shard-size", "4"], {"AWS_ENDPOINT_URL": proxy.url}))
    assert proxy.outages == 1 and time.monotonic() - start > 10
    assert out["rows"] == {"train": 16, "val": 6} and out["errors"] == 0, "a transient fault was taken for bad data"


def test_an_s3_endpoint_gone_for_good_stops_preprocess_with_one_line_and_no_dataset(raw_voc, proxy, s3_client):
    s3_client.create_bucket(Bucket="faults-pq2")
    proxy.outage_at_request(25, seconds=None)
    result = cli(["pipelines.preprocess", "--dataset", "voc", "--root", "s3://faults-raw/voc",
                  "--out", "s3://faults-pq2/voc", "--shard-size", "4"],
                 {"AWS_ENDPOINT_URL": proxy.url, "DEEPLAB_S3_MAX_ATTEMPTS": "4"})
    assert result.returncode == 2, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: s3://") and "Traceback" not in result.stderr
    keys = [o["Key"] for o in s3_client.list_objects_v2(Bucket="faults-pq2").get("Contents", [])]
    assert "voc/manifest.json" not in keys, "an incomplete dataset must not look complete"


def test_segment_stopped_by_an_s3_outage_then_rerun_gives_one_mask_per_image(raw_voc, model_dir, proxy, s3_client,
                                                                              ray_local, capsys, tracking):
    """The run stopped by the outage in a process of its own, whose Ray reaches S3 through the proxy;
    the rerun here, on this process's Ray, which reaches the endpoint directly."""
    from pipelines import segment

    upload_tree(s3_client, raw_voc / "VOCdevkit" / "VOC2012" / "JPEGImages", "faults-photos", "night")
    s3_client.create_bucket(Bucket="faults-seg")
    # Without the CRF: the outage hits the reading and writing tasks, which are the same either way.
    args = ["--model", str(model_dir), "--input", "s3://faults-photos/night", "--output", "s3://faults-seg/night",
            "--commit-every", "4", "--batch-size", "2", "--no-crf"]
    proxy.outage_at_request(40, seconds=None)
    first = cli(["pipelines.segment", *args], {"AWS_ENDPOINT_URL": proxy.url, "DEEPLAB_S3_MAX_ATTEMPTS": "4"})
    assert first.returncode == 2, first.stderr[-3000:]
    assert first.stderr.strip().splitlines()[-1].startswith("error: s3://faults-")
    assert proxy.outages == 1
    assert segment.main(args) == 0  # the endpoint is back
    rerun = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert rerun["errors"] == 0 and rerun["images"] + rerun["skipped"] == 22
    assert rerun["images"] > 0, "the interrupted run cannot have finished every image"
    keys = [o["Key"] for o in s3_client.list_objects_v2(Bucket="faults-seg", Prefix="night/")["Contents"]]
    assert len([k for k in keys if k.startswith("night/masks/") and k.endswith(".png")]) == 22
    rows = [r for k in keys if k.startswith("night/summary/") and k.endswith(".parquet")
            for r in pq.read_table(io.BytesIO(s3_client.get_object(Bucket="faults-seg", Key=k)["Body"].read()))
            .to_pylist()]
    assert sorted(r["relative"] for r in rows) == sorted({r["relative"] for r in rows}), "an image counted twice"
    assert len(rows) == 22 and {r["status"] for r in rows} == {"ok"}


def test_a_killed_crf_actor_is_restarted_and_every_image_gets_one_mask(raw_voc, model_dir, tmp_path, ray_local,
                                                                         tracking):
    """The run on this process's Ray, in a thread; one of its CRF actors (a child of this process's
    raylet) killed once it works on images."""
    from pipelines import segment

    out = tmp_path / "seg"
    images = raw_voc / "VOCdevkit" / "VOC2012" / "JPEGImages"
    argv = ["--model", str(model_dir), "--input", str(images), "--output", str(out), "--batch-size", "1",
            "--crf-actors", "2", "--commit-every", "100"]
    result: dict = {}
    thread = threading.Thread(target=lambda: result.update(code=segment.main(argv)))
    thread.start()
    deadline = time.monotonic() + 300
    victims: list[psutil.Process] = []
    while not victims:  # the CRF actors, once they are working on images
        assert thread.is_alive() and time.monotonic() < deadline, "no CRF actor appeared"
        if out.joinpath("masks").exists() and any(out.joinpath("masks").iterdir()):
            victims = descendants_named("LabelStage")
        time.sleep(0.05)
    victims[0].kill()  # SIGKILL, as the OOM killer would
    thread.join(600)
    assert result == {"code": 0}
    assert sorted(p.stem for p in (out / "masks").iterdir()) == sorted(p.stem for p in images.iterdir())
    rows = pq.read_table(out / "summary").to_pylist()
    assert len(rows) == 22 and len({r["relative"] for r in rows}) == 22 and {r["status"] for r in rows} == {"ok"}
