"""MLflow: where runs go, run lookup by name, and buffered metric logging.

Tracking URI: `MLFLOW_TRACKING_URI`, else the embedded default, a sqlite store in ./mlruns with
local artifacts. Metrics are buffered and sent in batches; a tracking server that is down costs a
warning and a later retry, never the training run.
"""
from __future__ import annotations

import os
import subprocess
import time
import warnings
from pathlib import Path

import mlflow
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

DEFAULT_DIR = "mlruns"
RUN_NAME_TAG = "deeplab.run_name"


# What a run in a shared experiment is: "segment", "monitor", "comparison" (training runs have none).
KIND_TAG = "deeplab.kind"
# The nightly job a segment run belongs to (`segment --job`): monitor compares a run with its own job's.
JOB_TAG = "deeplab.job"


def tracking_uri(uri: str | None = None) -> str:
    """The given URI, else MLFLOW_TRACKING_URI, else the embedded default ./mlruns/mlflow.db."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    root = Path(DEFAULT_DIR).resolve()
    root.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{root / 'mlflow.db'}"


def is_local_store(uri: str) -> bool:
    """A store in this machine's files (sqlite, a directory), which other machines cannot reach."""
    scheme = uri.partition("://")[0] if "://" in uri else ""
    return scheme in ("", "file") or scheme.startswith("sqlite")


def setup(experiment: str, uri: str | None = None) -> str:
    """Point MLflow at the tracking store and return the experiment id (created when missing)."""
    uri = tracking_uri(uri)
    mlflow.set_tracking_uri(uri)
    os.environ["MLFLOW_TRACKING_URI"] = uri  # Ray workers and child processes use the same store
    client = MlflowClient()
    found = client.get_experiment_by_name(experiment)
    if found is not None:
        return found.experiment_id
    location = None
    if uri.startswith("sqlite:///"):  # a file store keeps its artifacts beside its database
        db = Path(uri[len("sqlite:///"):])
        db.parent.mkdir(parents=True, exist_ok=True)
        location = (db.parent / "artifacts").resolve().as_uri()
    return client.create_experiment(experiment, artifact_location=location)


def find_run(experiment_id: str, run_name: str) -> str | None:
    """The run started earlier under this name (so a restarted training run continues it)."""
    runs = MlflowClient().search_runs([experiment_id], f"tags.`{RUN_NAME_TAG}` = '{run_name}'",
                                      max_results=1, order_by=["attributes.start_time DESC"])
    return runs[0].info.run_id if runs else None


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                              cwd=Path(__file__).parent).stdout.strip() or "unknown"
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


class MetricBuffer:
    """Collects metrics and sends them in one batch at `flush()` (e.g. after each checkpoint).
    Failures warn and keep the metrics (bounded) for the next flush.

    A step at or below the last one MLflow already holds for a key is never sent again: a run that
    resumes from a checkpoint older than its last flush recomputes those steps, and logging them
    twice would corrupt the history."""

    def __init__(self, run_id: str, tracking_uri: str, limit: int = 100_000):
        self.run_id, self.tracking_uri, self.limit = run_id, tracking_uri, limit
        # A server that is down must cost seconds, not MLflow's default minutes of retries per call:
        # this buffer retries at the next flush anyway. (Process-wide: it lives in the training worker.)
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        self.pending: list[Metric] = []
        self.logged_until: dict[str, int] = {}

    def add(self, metrics: dict[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        self.pending.extend(Metric(k, float(v), now, step) for k, v in metrics.items())
        del self.pending[: max(0, len(self.pending) - self.limit)]

    def tag(self, key: str, value: str) -> None:
        try:
            MlflowClient(self.tracking_uri).set_tag(self.run_id, key, value)
        except Exception as e:
            warnings.warn(f"MLflow unreachable, tag {key} not set: {type(e).__name__}", RuntimeWarning, stacklevel=2)

    def flush(self) -> bool:
        client = MlflowClient(self.tracking_uri)
        try:
            for key in {m.key for m in self.pending} - set(self.logged_until):
                history = client.get_metric_history(self.run_id, key)
                self.logged_until[key] = max((m.step for m in history), default=-1)
            self.pending = [m for m in self.pending if m.step > self.logged_until[m.key]]
            while self.pending:  # MLflow takes 1000 metrics per batch; drop each batch once it is sent
                batch = self.pending[:1000]
                client.log_batch(self.run_id, metrics=batch)
                for m in batch:
                    self.logged_until[m.key] = max(self.logged_until[m.key], m.step)
                del self.pending[:1000]
        except Exception as e:
            warnings.warn(f"MLflow unreachable, {len(self.pending)} metrics kept for the next flush: "
                          f"{type(e).__name__}: {str(e).splitlines()[0][:200]}", RuntimeWarning, stacklevel=2)
            return False
        return True
