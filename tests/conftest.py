"""Shared fixtures: the real parts on loopback (S3 endpoint by moto_server, a local Ray cluster)."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 60.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server for {url} exited with {proc.returncode}")
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except urllib.error.HTTPError:
            return  # it answered
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer in {timeout}s")


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory):
    """A moto_server S3 endpoint on 127.0.0.1, reached through the standard AWS variables."""
    port = free_port()
    log = open(tmp_path_factory.mktemp("moto") / "moto.log", "wb")
    proc = subprocess.Popen([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    env = {"AWS_ENDPOINT_URL": url, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        wait_http(url, proc=proc)
        yield url
    finally:
        stop(proc)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="session")
def s3_client(s3_endpoint):
    import boto3

    return boto3.client("s3")


@pytest.fixture(scope="session")
def ray_local(s3_endpoint):
    """A real local Ray instance (4 logical CPUs on 2 cores). Started after the S3 variables are set so workers inherit them."""
    import ray

    ray.init(address="local", num_cpus=4, log_to_driver=False)  # logical CPUs: room for Train workers and Ray Data
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
    s3_client.create_bucket(Bucket="mlflow-artifacts")
    work = tmp_path_factory.mktemp("mlflow_server")
    port = free_port()
    env = {**os.environ, "MLFLOW_S3_ENDPOINT_URL": s3_endpoint}
    log = open(work / "server.log", "wb")
    proc = subprocess.Popen([str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
                             "--backend-store-uri", f"sqlite:///{work / 'mlflow.db'}",
                             "--artifacts-destination", "s3://mlflow-artifacts/", "--workers", "1"],
                            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=work)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/health", timeout=120, proc=proc)
        yield url
    finally:
        stop(proc)


@pytest.fixture()
def ray_two_nodes(s3_endpoint, tmp_path):
    """A local Ray cluster of two nodes (two raylets) on 127.0.0.1; each `ray start --block` process
    owns its node's daemons and is stopped by its PID."""
    port, dashboard = free_port(), free_port()
    env = {**os.environ, "RAY_ADDRESS": ""}
    common = ["--node-ip-address", "127.0.0.1", "--num-cpus", "2", "--disable-usage-stats", "--block"]
    logs = [open(tmp_path / f"ray_{n}.log", "wb") for n in ("head", "worker")]
    head = subprocess.Popen([str(BIN / "ray"), "start", "--head", "--port", str(port), "--dashboard-host", "127.0.0.1",
                             "--dashboard-port", str(dashboard), *common], stdout=logs[0], stderr=subprocess.STDOUT,
                            env=env)
    procs = [head]
    try:
        wait_http(f"http://127.0.0.1:{dashboard}/api/version", timeout=120, proc=head)
        worker = subprocess.Popen([str(BIN / "ray"), "start", "--address", f"127.0.0.1:{port}", *common],
                                  stdout=logs[1], stderr=subprocess.STDOUT, env=env)
        procs.append(worker)
        address = f"127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:  # both raylets registered
            status = subprocess.run([str(BIN / "ray"), "status", "--address", address], capture_output=True,
                                    text=True, env=env, timeout=60)
            if status.stdout.count("node_") >= 2:
                break
            assert time.monotonic() < deadline, status.stdout + status.stderr
            time.sleep(1)
        yield address
    finally:
        for proc in reversed(procs):
            stop(proc)


@pytest.fixture()
def tracking(tmp_path, monkeypatch):
    """A fresh sqlite MLflow store for one test, through MLFLOW_TRACKING_URI as the CLIs read it."""
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    return uri
