"""Secrets planted in the environment never reach anything the product writes: logs, MLflow params,
tags and artifacts, checkpoints, outputs, Ray's session logs."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from deeplab_core.data.synth import write_voc
from pipelines.preprocess import preprocess
from tests.conftest import upload_tree

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_planted_secrets_are_written_nowhere(s3_endpoint, s3_client, ray_local, tmp_path):
    token = uuid.uuid4().hex
    secrets = {"AWS_ACCESS_KEY_ID": f"AKIAPLANTED{token[:8].upper()}",  # the endpoint accepts any key
               "AWS_SECRET_ACCESS_KEY": f"planted-secret-{token}", "AWS_SESSION_TOKEN": f"planted-session-{token}",
               "MLFLOW_TRACKING_PASSWORD": f"planted-mlflow-{token}", "DATABASE_PASSWORD": f"planted-db-{token}"}
    started = time.time()
    write_voc(tmp_path / "raw", train=8, val=4, seed=2, size=(64, 48), classes=5)
    preprocess("voc", str(tmp_path / "raw"), str(tmp_path / "pq"), splits=["train", "val"])
    upload_tree(s3_client, tmp_path / "raw" / "VOCdevkit" / "VOC2012" / "JPEGImages", "secret-photos", "night")
    env = {**os.environ, **secrets, "PYTHONPATH": str(ROOT), "RAY_ADDRESS": "",
           "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"}
    logs = []

    def cli(*argv: str) -> dict:
        result = subprocess.run([sys.executable, "-m", *argv], capture_output=True, text=True, cwd=tmp_path,
                                env=env, timeout=900)
        logs.append(result.stdout + result.stderr)
        assert result.returncode == 0, result.stderr[-4000:]
        return json.loads(result.stdout.strip().splitlines()[-1])

    trained = cli("pipelines.train", "--config", str(ROOT / "configs" / "synthetic_tiny.yaml"),
                  "--set", f"data.uri={tmp_path / 'pq'}", "--set", "data.train_split=train",
                  "--set", "data.crop_size=48", "--set", "train.batch_size=4", "--set", "train.iterations=2",
                  "--set", "train.checkpoint_interval=2", "--set", "train.eval_interval=2",
                  "--set", f"ray.storage_path={tmp_path / 'runs'}", "--set", "tracking.overlays=1",
                  "--set", "tracking.experiment=secrets")
    cli("pipelines.segment", "--model", trained["model_uri"], "--input", "s3://secret-photos/night", "--output",
        str(tmp_path / "seg"), "--overlays")  # the planted credentials in use

    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    ray_logs = [p for session in Path("/tmp/ray").glob("session_2*") if session.stat().st_mtime >= started - 5
                for p in (session / "logs").rglob("*") if p.is_file()]
    assert any(p.name == "mlflow.db" for p in written) and any(p.suffix == ".pt" for p in written)
    assert ray_logs, "the CLIs' Ray sessions left no logs to scan"
    for value in secrets.values():
        needle = value.encode()
        for path in written + ray_logs:
            assert needle not in path.read_bytes(), f"secret found in {path}"
        assert all(value not in text for text in logs), "secret found in a CLI's output"
