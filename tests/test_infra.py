"""The cluster configs: ray_cluster.yaml through Ray's own validation (offline), the KubeRay manifests
and the Dockerfile for the fields they need, and every command they run parsed by our own CLIs."""
from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import ray
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from infra.local_stack import free_port
from pipelines import monitor, segment, train
from pipelines.config import load_config

ROOT = Path(__file__).resolve().parents[1]
KUBERAY = ROOT / "infra" / "kuberay"


def manifests(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((KUBERAY / name).read_text()) if d]


def check_train_command(argv: list[str]) -> None:
    """The command parses and its config (preset + overrides) validates."""
    args = train.parse_args(argv)
    cfg = load_config(args.config, args.set)
    assert cfg.ray.use_gpu and cfg.ray.num_workers >= 2
    assert cfg.data.uri.startswith("s3://") and cfg.ray.storage_path.startswith("s3://")  # shared by every node


def check_segment_command(argv: list[str]) -> None:
    args, parser = segment.parse_args(argv)
    assert args.model.startswith("models:/") and args.input.startswith("s3://") and not args.no_crf
    segment.crf_params(args, parser)


def test_ray_cluster_yaml_passes_rays_own_validation():
    raw = yaml.safe_load((ROOT / "ray_cluster.yaml").read_text())
    config = prepare_config(raw)
    validate_config(config)  # Ray's JSON schema and node-type rules, no cloud calls
    head = config["available_node_types"][config["head_node_type"]]
    gpu = config["available_node_types"]["worker.gpu"]
    assert config["provider"]["type"] == "aws"
    assert head["node_config"]["InstanceType"].startswith(("m", "c", "r"))  # a CPU head
    assert gpu["node_config"]["InstanceType"].startswith(("g", "p"))  # GPU instances
    assert 0 <= gpu["min_workers"] <= gpu["max_workers"] <= config["max_workers"]
    assert config["docker"]["image"] and config["file_mounts"]["/opt/deeplab-ray"] == "."
    assert any("pip install" in c and "/opt/deeplab-ray" in c for c in config["setup_commands"])
    assert ".gitignore" in config["rsync_filter"]


def test_ray_cluster_yaml_documents_commands_that_parse():
    comment = comment_text(ROOT / "ray_cluster.yaml")
    assert "ray up ray_cluster.yaml" in comment
    submit = shlex.split(comment.split("ray submit ray_cluster.yaml pipelines/train.py", 1)[1].split("ray dashboard")[0])
    check_train_command(submit)
    job = shlex.split(comment.split("python -m pipelines.segment", 1)[1].split("ray down")[0])
    check_segment_command(job)


def comment_text(path: Path) -> str:
    return " ".join(line.lstrip("# ").rstrip("\\") for line in path.read_text().splitlines() if line.startswith("#"))


def test_onprem_cluster_yaml_passes_rays_own_validation_and_documents_commands_that_parse():
    path = ROOT / "infra" / "ray_cluster_onprem.yaml"
    config = prepare_config(yaml.safe_load(path.read_text()))
    validate_config(config)
    assert config["provider"]["type"] == "local" and config["provider"]["head_ip"] and config["provider"]["worker_ips"]
    assert config["file_mounts"]["~/deeplab-ray"] == "." and ".gitignore" in config["rsync_filter"]
    assert config["setup_commands"][0] == "make -C ~/deeplab-ray setup"
    assert "MLFLOW_TRACKING_URI=http" in config["setup_commands"][1]  # a server every node reaches
    assert any("--dashboard-host=127.0.0.1" in c for c in config["head_start_ray_commands"])
    comment = comment_text(path)
    assert "ray up infra/ray_cluster_onprem.yaml" in comment and "ray down infra/ray_cluster_onprem.yaml" in comment
    check_train_command(shlex.split(comment.split("ray submit infra/ray_cluster_onprem.yaml pipelines/train.py", 1)[1]
                                    .split("ray exec")[0]))
    check_segment_command(shlex.split(comment.split("'python -m pipelines.segment", 1)[1].split("'")[0]))


def test_kuberay_cluster_has_a_cpu_head_and_an_autoscaled_gpu_group():
    (cluster,) = manifests("raycluster.yaml")
    assert cluster["apiVersion"] == "ray.io/v1" and cluster["kind"] == "RayCluster"
    assert cluster["spec"]["rayVersion"] == ray.__version__
    head = cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in head["resources"]["limits"]
    (group,) = cluster["spec"]["workerGroupSpecs"]
    worker = group["template"]["spec"]["containers"][0]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    for container in (head, worker):
        assert container["image"] == yaml.safe_load((ROOT / "ray_cluster.yaml").read_text())["docker"]["image"]
        assert not any("AWS_SECRET" in e["name"] for e in container.get("env", [])), "credentials belong in a Secret"
        assert container["envFrom"][0]["secretRef"]["name"]


def test_kuberay_training_job_runs_a_valid_config_on_the_cluster():
    (job,) = manifests("rayjob-train.yaml")
    assert job["kind"] == "RayJob" and job["spec"]["clusterSelector"] == {"ray.io/cluster": "deeplab"}
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[:3] == ["python", "-m", "pipelines.train"]
    check_train_command(argv[3:])


def test_nightly_schedule_creates_a_segmentation_rayjob():
    docs = {d["kind"]: d for d in manifests("nightly-segment.yaml")}
    assert {"ServiceAccount", "Role", "RoleBinding", "ConfigMap", "CronJob"} <= set(docs)
    cron = docs["CronJob"]["spec"]
    assert len(cron["schedule"].split()) == 5 and cron["concurrencyPolicy"] == "Forbid"
    pod = cron["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == docs["ServiceAccount"]["metadata"]["name"]
    assert {"create"} <= set(docs["Role"]["rules"][0]["verbs"]) and docs["Role"]["rules"][0]["resources"] == ["rayjobs"]
    mounted = pod["volumes"][0]["configMap"]["name"]
    assert mounted == docs["ConfigMap"]["metadata"]["name"]
    command = pod["containers"][0]["command"]
    assert command[:3] == ["kubectl", "create", "-f"]
    rayjob = yaml.safe_load(docs["ConfigMap"]["data"][Path(command[3]).name])
    assert rayjob["kind"] == "RayJob" and rayjob["metadata"]["generateName"]  # a new job every night
    segment_line, monitor_line = rayjob["spec"]["entrypoint"].replace("$(date +%F)", "2026-11-24").split(" && ")
    argv = shlex.split(segment_line)
    assert argv[:3] == ["python", "-m", "pipelines.segment"]
    check_segment_command(argv[3:])
    argv = shlex.split(monitor_line)  # then the night against the job's earlier ones
    assert argv[:3] == ["python", "-m", "pipelines.monitor"] and monitor.parse_args(argv[3:]).window == 7


def test_dockerfile_installs_the_project_with_its_pins_on_a_cuda_base():
    text = (ROOT / "infra" / "Dockerfile").read_text()
    froms = [line for line in text.splitlines() if line.startswith("FROM")]
    assert froms and froms[0].startswith("FROM nvidia/cuda:")
    assert "python3.11" in text and "-c constraints.txt" in text and "COPY . ." in text
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".venv" in ignored and ".git" in ignored


def test_benchmarks_start_ray_beside_a_stale_cluster_record():
    """`make bench` after `make test`: Ray's record of a cluster that is gone (`ray_current_cluster`)
    must not stop a benchmark from starting its own local Ray. The record is planted in a Ray temp
    folder of the test's own (RAY_TMPDIR, where Ray looks for it): the machine's record belongs to
    the clusters other tests start meanwhile. A short path: Ray's socket paths live under it."""
    from ray._common.utils import get_ray_address_file

    ray_tmp = tempfile.mkdtemp(prefix="ray-")
    try:
        record = Path(get_ray_address_file(os.path.join(ray_tmp, "ray")))  # Ray's folder: $RAY_TMPDIR/ray
        record.parent.mkdir()
        record.write_text(f"127.0.0.1:{free_port()}")  # nothing listens there
        result = subprocess.run([sys.executable, "bench/preprocess.py", "--images", "4", "--repeats", "1"],
                                cwd=ROOT, capture_output=True, text=True, timeout=300,
                                env={**os.environ, "RAY_ADDRESS": "", "RAY_TMPDIR": ray_tmp})
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "ignoring Ray's record of a cluster" in result.stderr and "ratio" in result.stdout
