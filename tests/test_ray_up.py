"""The Ray cluster launcher for real: `ray up` of infra/ray_cluster_onprem.yaml (Ray's `local`
provider) over SSH onto a head on this machine (tests/ssh_head.py), then `ray submit
pipelines/train.py` with 2 workers, `ray exec` and `ray job submit --working-dir .`
segmentation, and `ray down`. Every script must run on that cluster: it joins it by itself (Ray's
record on the head), and the Ray nodes the training run records in MLflow are the cluster's."""
from __future__ import annotations

import getpass
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import urllib.request
import uuid
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from deeplab_core.data.synth import write_voc
from infra.local_stack import LOOPBACK, free_port, port_in_use
from pipelines.preprocess import preprocess
from tests.ssh_head import SshHead

ROOT = Path(__file__).resolve().parents[1]
ONPREM = ROOT / "infra" / "ray_cluster_onprem.yaml"
BIN = Path(sys.executable).parent
pytestmark = pytest.mark.slow


def cluster_config(head: SshHead, ray_port: int, dashboard_port: int) -> dict:
    """infra/ray_cluster_onprem.yaml aimed at `head`: one machine, this venv instead of a new one (the
    first setup command would build it), the cluster's variables in the file the shipped hook sources."""
    config = yaml.safe_load(ONPREM.read_text())
    config["cluster_name"] = f"deeplab-test-{uuid.uuid4().hex[:8]}"
    config["provider"] = {"type": "local", "head_ip": LOOPBACK, "worker_ips": []}
    config["auth"] = head.auth
    config["min_workers"] = config["max_workers"] = 0
    make, env_file, hook = config["setup_commands"]
    assert make == "make -C ~/deeplab-ray setup" and "> ~/.deeplab-ray.env" in env_file, config["setup_commands"]
    variables = [f'export PATH="{BIN}:$PATH"', f"export RAY_TMPDIR={head.dir / 'ray'}", "export RAY_AUTH_MODE=disabled",
                 f"export MLFLOW_TRACKING_URI=sqlite:///{head.dir / 'mlflow.db'}",
                 # the tests' Ray Train poll interval (tests/conftest.py) for the run `ray submit` starts there
                 f"export RAY_TRAIN_HEALTH_CHECK_INTERVAL_S={os.environ['RAY_TRAIN_HEALTH_CHECK_INTERVAL_S']}"]
    config["setup_commands"] = ["test -f ~/deeplab-ray/pyproject.toml",  # the checkout arrived through rsync
                                f"printf '%s\\n' {' '.join(shlex.quote(v) for v in variables)} > ~/.deeplab-ray.env",
                                hook]
    # Every listening port of the head on loopback and free (the shipped file takes Ray's defaults).
    ports = (f"--port={ray_port} --node-ip-address={LOOPBACK} --num-cpus=4 --dashboard-port={dashboard_port} "
             f"--dashboard-agent-listen-port={free_port()} --ray-client-server-port={free_port()}")
    config["head_start_ray_commands"] = [c.replace("--port=6379", ports) for c in config["head_start_ray_commands"]]
    assert any(ports in c for c in config["head_start_ray_commands"])
    return config


def cluster_node_ids(dashboard_url: str) -> set[str]:
    with urllib.request.urlopen(f"{dashboard_url}/nodes?view=summary", timeout=10) as r:
        nodes = json.load(r)["data"]["summary"]
    return {n["raylet"]["nodeId"] for n in nodes if n.get("raylet", {}).get("state") == "ALIVE"}


def last_json(text: str) -> dict:
    return json.loads([line for line in text.splitlines() if line.startswith("{")][-1])


@pytest.fixture(scope="module")
def head():
    head = SshHead()
    try:
        yield head
    finally:
        head.close()


def test_ray_up_submit_exec_job_and_down_run_on_the_cluster(head, ray_local):
    work = head.dir / "work"  # outside the head's private home: the test reads what the cluster wrote
    work.mkdir()
    ray_port, dashboard_port = free_port(), free_port()
    config = work / "cluster.yaml"
    cluster = cluster_config(head, ray_port, dashboard_port)
    config.write_text(yaml.safe_dump(cluster))
    launcher_tmp = head.dir / "launcher"
    launcher_tmp.mkdir()
    # The launcher's own state (local provider state, config cache) stays in the test's directory.
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "RAY_ADDRESS": "", "RAY_AUTH_MODE": "disabled",
           "RAY_TMPDIR": str(launcher_tmp), "TMPDIR": str(launcher_tmp)}

    def ray(*argv: str, timeout: float = 600, **extra) -> str:
        result = subprocess.run([str(BIN / "ray"), *argv], capture_output=True, text=True, cwd=ROOT,
                                env={**env, **extra}, timeout=timeout, stdin=subprocess.DEVNULL)
        text = result.stdout + result.stderr
        assert result.returncode == 0, f"ray {argv[0]} exited {result.returncode}:\n{text[-4000:]}"
        return text

    # Ray records (and connects to) the head by the machine's address even when it listens on loopback.
    joined = re.compile(rf"ray: joined the cluster at [\d.]+:{ray_port} \((recorded on this machine|RAY_ADDRESS)\)")
    try:
        ray("up", "-y", "--no-config-cache", str(config))
        nodes = cluster_node_ids(f"http://{LOOPBACK}:{dashboard_port}")
        assert len(nodes) == 1

        write_voc(work / "raw", train=8, val=4, seed=5, size=(64, 48))
        preprocess("voc", str(work / "raw"), str(work / "pq"))  # here, on this session's Ray

        out = ray("submit", str(config), "pipelines/train.py", "--config", "configs/synthetic_tiny.yaml",
                  "--set", f"data.uri={work / 'pq'}", "--set", "data.train_split=train", "--set", "data.crop_size=48",
                  "--set", "data.val_max_images=2", "--set", "train.iterations=4", "--set", "train.batch_size=2",
                  "--set", "train.eval_interval=4", "--set", "train.checkpoint_interval=4",
                  "--set", "train.log_interval=2", "--set", f"ray.storage_path={work / 'runs'}",
                  "--set", "tracking.experiment=onprem", "--set", "tracking.register_model=null",
                  "--set", "tracking.overlays=1")
        assert joined.search(out) and "started a local instance" not in out, out[-3000:]
        summary = last_json(out)
        assert summary["iterations"] == 4 and Path(summary["checkpoint"]).is_dir()
        run = MlflowClient(f"sqlite:///{head.dir / 'mlflow.db'}").get_run(summary["run_id"])
        ranks = run.data.tags["train_nodes"].split(",")
        assert len(ranks) == 2 and set(ranks) <= nodes, (ranks, nodes)  # both workers on the cluster's node

        photos = next((work / "raw").rglob("JPEGImages"))
        # Without the CRF here and below: the launcher's paths are the subject (the CRF on a cluster:
        # test_end_to_end).
        out = ray("exec", str(config), f"python -m pipelines.segment --model {summary['checkpoint']} "
                                       f"--input {photos} --output {work / 'seg-exec'} --no-crf")
        assert joined.search(out), out[-3000:]
        assert last_json(out)["images"] == 12 and last_json(out)["errors"] == 0

        # The job API, as the README's nightly cron line uses it, with the code shipped from here.
        job = subprocess.run([str(BIN / "ray"), "job", "submit", "--working-dir", ".", "--", "python", "-m",
                              "pipelines.segment", "--model", summary["checkpoint"], "--input", str(photos),
                              "--output", str(work / "seg-job"), "--no-crf"],
                             capture_output=True, text=True, cwd=ROOT, timeout=600, stdin=subprocess.DEVNULL,
                             env={**env, "RAY_ADDRESS": f"http://{LOOPBACK}:{dashboard_port}"})
        assert job.returncode == 0, (job.stdout + job.stderr)[-4000:]
        assert joined.search(job.stdout + job.stderr).group(1) == "RAY_ADDRESS"
        assert last_json(job.stdout)["images"] == 12
        assert len(list((work / "seg-job" / "masks").rglob("*.png"))) == 12
    finally:
        ray("down", "-y", str(config), timeout=300)
        # The launcher's SSH control directory of this cluster (ray/autoscaler/_private/command_runner.py).
        digest = lambda text: hashlib.sha256(text.encode()).hexdigest()[:10]  # noqa: E731
        shutil.rmtree(f"/tmp/ray_ssh_{digest(getpass.getuser())}/{digest(cluster['cluster_name'])}",
                      ignore_errors=True)
    assert not port_in_use(ray_port)  # `ray down` stopped the cluster's Ray
