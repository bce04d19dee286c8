"""The real stack on one machine, every service on 127.0.0.1: an S3 endpoint (moto_server), an
MLflow tracking server (sqlite backend, artifacts in S3 on that endpoint) and a Ray cluster of two
nodes (a head and one worker, two raylets).

    python -m infra.local_stack up [--dir .stack]   # start, health-check, print the variables to export
    eval "$(python -m infra.local_stack env)"       # those variables, in this shell
    python -m infra.local_stack status
    python -m infra.local_stack down                 # stop every process by its recorded PID

`--dir` holds state.json (PIDs, ports), one log per service and the MLflow database. S3 objects
live in the endpoint's memory and go with `down`. The credentials printed are dummies that only
the local endpoint accepts; Ray's token authentication is off (RAY_AUTH_MODE=disabled, exported
too), as every service listens on 127.0.0.1 only. Tests start the same services through `start_*`.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

BIN = Path(sys.executable).parent
LOOPBACK = "127.0.0.1"
ARTIFACT_BUCKET = "mlflow-artifacts"
# The local endpoint accepts any key; these dummies never leave this machine.
LOCAL_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                     "AWS_DEFAULT_REGION": "us-east-1"}


class StackError(RuntimeError):
    """A service that would not start or answer; the message names it and its log."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def port_in_use(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex((LOOPBACK, port)) == 0


def wait_http(url: str, timeout: float = 60.0, proc: subprocess.Popen | None = None) -> None:
    """Until `url` answers (any HTTP status); fails early when `proc` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise StackError(f"server for {url} exited with {proc.returncode}")
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except urllib.error.HTTPError:
            return  # it answered
        except OSError:
            time.sleep(0.2)
    raise StackError(f"{url} did not answer in {timeout:.0f}s")


COMMANDS = {"s3": "moto_server", "mlflow": "mlflow", "ray-head": "ray", "ray-worker": "ray"}


def service_running(pid: int, name: str) -> bool:
    """The recorded PID still runs this service (not a process that reused the number)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return COMMANDS[name] in f.read().decode(errors="replace") and _alive(pid)
    except OSError:
        return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child of ours is gone for every purpose here
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def _wait_gone(pid: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        if not _alive(pid):
            return
        time.sleep(0.1)


def stop_pid(pid: int, timeout: float = 15.0) -> None:
    """SIGTERM and wait, then SIGKILL whatever is left of its process group: each service starts in a
    session of its own, so leftovers of its children go with it."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    _wait_gone(pid, timeout)
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    _wait_gone(pid, 5.0)


def stop(proc: subprocess.Popen) -> None:
    stop_pid(proc.pid)
    proc.wait()


def _spawn(argv: list[str], log: Path, env: dict | None = None, cwd: Path | None = None) -> subprocess.Popen:
    with open(log, "ab") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, cwd=cwd, start_new_session=True)


def s3_env(url: str) -> dict[str, str]:
    """What a client needs to reach the local endpoint as it would reach S3."""
    return {"AWS_ENDPOINT_URL": url, **LOCAL_CREDENTIALS}


def local_s3_client(url: str):
    """A boto3 S3 client of the local endpoint, whatever the AWS variables of this process say."""
    import boto3

    return boto3.client("s3", endpoint_url=url, region_name=LOCAL_CREDENTIALS["AWS_DEFAULT_REGION"],
                        aws_access_key_id=LOCAL_CREDENTIALS["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=LOCAL_CREDENTIALS["AWS_SECRET_ACCESS_KEY"])


def start_s3(port: int, log: Path) -> tuple[subprocess.Popen, str]:
    """moto_server on 127.0.0.1:port; returns (process, endpoint URL) once it answers."""
    proc = _spawn([str(BIN / "moto_server"), "-H", LOOPBACK, "-p", str(port)], log)
    url = f"http://{LOOPBACK}:{port}"
    wait_http(url, proc=proc)
    return proc, url


def start_mlflow(port: int, workdir: Path, s3_url: str, log: Path) -> tuple[subprocess.Popen, str]:
    """`mlflow server` on 127.0.0.1:port: sqlite in `workdir`, artifacts proxied into
    s3://mlflow-artifacts/ on the endpoint (the bucket must exist). MLflow's job execution (GenAI
    evaluation jobs, which nothing here submits) is off unless asked for: its eight consumer processes
    cost 20 CPU-seconds to start and a quarter of a core while idle (measured on 2 cores)."""
    env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **os.environ, **s3_env(s3_url),
           "MLFLOW_S3_ENDPOINT_URL": s3_url}
    proc = _spawn([str(BIN / "mlflow"), "server", "--host", LOOPBACK, "--port", str(port),
                   "--backend-store-uri", f"sqlite:///{workdir / 'mlflow.db'}",
                   "--artifacts-destination", f"s3://{ARTIFACT_BUCKET}/", "--workers", "1"],
                  log, env=env, cwd=workdir)
    url = f"http://{LOOPBACK}:{port}"
    wait_http(f"{url}/health", timeout=120, proc=proc)
    return proc, url


def _ray_start(args: list[str], cpus: int, log: Path, env: dict) -> subprocess.Popen:
    # --block: this process owns the node's daemons, so stopping its PID stops the node. Each node's
    # dashboard agent gets its own port: Ray's fixed default (52365) makes the nodes of one machine
    # race for it, and a head that loses has no job agent ("No available agent to submit job").
    # On SIGTERM `ray start --block` first drains its node, for up to 30 s, until no worker lease is
    # left: after a job, Ray Data's and Ray Train's detached actors hold theirs, so `down` waited out
    # stop_pid's 15 s and killed the node (the end-to-end test's stack: down 16.7 s). Nothing here
    # serves traffic to drain; without the drain the node stops its processes at once, gracefully.
    return _spawn([str(BIN / "ray"), "start", *args, "--node-ip-address", LOOPBACK, "--num-cpus", str(cpus),
                   "--dashboard-agent-listen-port", str(free_port()), "--disable-usage-stats", "--block"], log,
                  # Job entrypoints run `python`: the one of this environment, on every node.
                  env={"RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0", **env, "RAY_ADDRESS": "",
                       "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}"})


def start_ray_head(port: int, dashboard_port: int, cpus: int, log: Path, env: dict) -> subprocess.Popen:
    proc = _ray_start(["--head", "--port", str(port), "--dashboard-host", LOOPBACK,
                       "--dashboard-port", str(dashboard_port)], cpus, log, env)
    wait_http(f"http://{LOOPBACK}:{dashboard_port}/api/version", timeout=120, proc=proc)
    return proc


def start_ray_worker(address: str, cpus: int, log: Path, env: dict) -> subprocess.Popen:
    return _ray_start(["--address", address], cpus, log, env)


def ray_alive_nodes(dashboard_url: str) -> int:
    with urllib.request.urlopen(f"{dashboard_url}/nodes?view=summary", timeout=10) as r:
        nodes = json.load(r)["data"]["summary"]
    return sum(n.get("raylet", {}).get("state") == "ALIVE" for n in nodes)


def wait_ray_nodes(dashboard_url: str, count: int, timeout: float = 120.0,
                   procs: tuple[subprocess.Popen, ...] = ()) -> None:
    deadline = time.monotonic() + timeout
    while True:
        for proc in procs:
            if proc.poll() is not None:
                raise StackError(f"a Ray node exited with {proc.returncode} before joining")
        try:
            if ray_alive_nodes(dashboard_url) >= count:
                return
        except (OSError, ValueError, KeyError):
            pass
        if time.monotonic() > deadline:
            raise StackError(f"Ray at {dashboard_url}: fewer than {count} nodes alive after {timeout:.0f}s")
        time.sleep(1)


def wait_job_submission(env: dict, timeout: float = 180.0) -> None:
    """Until a trivial job runs through `ray job submit`: the head's job agent can start some time
    after its raylet registers ("No available agent to submit job")."""
    deadline = time.monotonic() + timeout
    while True:
        result = subprocess.run([str(BIN / "ray"), "job", "submit", "--", "true"], env=env, capture_output=True,
                                text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        if result.returncode == 0:
            return
        if time.monotonic() > deadline:
            raise StackError(f"ray job submit still fails after {timeout:.0f}s: "
                             f"{(result.stderr.strip().splitlines() or ['?'])[-1]}")
        time.sleep(2)


@dataclass
class Stack:
    dir: str
    s3_port: int
    mlflow_port: int
    ray_port: int
    dashboard_port: int
    pids: dict[str, int] = field(default_factory=dict)

    @property
    def s3_url(self) -> str:
        return f"http://{LOOPBACK}:{self.s3_port}"

    @property
    def mlflow_url(self) -> str:
        return f"http://{LOOPBACK}:{self.mlflow_port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://{LOOPBACK}:{self.dashboard_port}"

    def env(self) -> dict[str, str]:
        """The variables that point the CLIs (and `ray job submit`) at this stack."""
        # Ray's token auth follows RAY_AUTH_MODE, else whether a token file exists on the machine:
        # pinned here so nodes and clients always agree. Every service listens on 127.0.0.1 only.
        return {"RAY_ADDRESS": f"{LOOPBACK}:{self.ray_port}", "RAY_API_SERVER_ADDRESS": self.dashboard_url,
                "RAY_AUTH_MODE": "disabled", "MLFLOW_TRACKING_URI": self.mlflow_url, **s3_env(self.s3_url)}

    def save(self) -> None:
        path = Path(self.dir, "state.json")
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=1))
        tmp.replace(path)

    @classmethod
    def load(cls, directory: str) -> "Stack | None":
        try:
            return cls(**json.loads(Path(directory, "state.json").read_text()))
        except FileNotFoundError:
            return None


def _port(wanted: int, name: str) -> int:
    if wanted == 0:
        return free_port()
    if port_in_use(wanted):
        raise StackError(f"port {wanted} for {name} is in use; pick another with --{name}-port "
                         "(0 = any free port)")
    return wanted


def up(directory: str = ".stack", s3_port: int = 9000, mlflow_port: int = 5000, ray_port: int = 6379,
       dashboard_port: int = 8265, cpus_per_node: int = 2, log=print) -> Stack:
    """Start S3, MLflow and a two-node Ray cluster; each is health-checked before the next starts.
    On a failure everything started so far is stopped again."""
    work = Path(directory).resolve()
    old = Stack.load(str(work))
    if old and any(service_running(pid, name) for name, pid in old.pids.items()):
        raise StackError(f"a stack is already running from {work} (PIDs {sorted(old.pids.values())}); "
                         "run 'down' first")
    work.mkdir(parents=True, exist_ok=True)
    stack = Stack(str(work), _port(s3_port, "s3"), _port(mlflow_port, "mlflow"), _port(ray_port, "ray"),
                  _port(dashboard_port, "dashboard"))
    procs: list[subprocess.Popen] = []

    def started(name: str, proc: subprocess.Popen) -> None:
        procs.append(proc)
        stack.pids[name] = proc.pid
        stack.save()  # PIDs on disk at once: `down` can stop a half-started stack
        log(f"stack: {name} up (PID {proc.pid}, log {work / (name + '.log')})")

    try:
        proc, _ = start_s3(stack.s3_port, work / "s3.log")
        started("s3", proc)
        local_s3_client(stack.s3_url).create_bucket(Bucket=ARTIFACT_BUCKET)
        proc, _ = start_mlflow(stack.mlflow_port, work, stack.s3_url, work / "mlflow.log")
        started("mlflow", proc)
        # Ray's workers read S3 and MLflow: the nodes carry the stack's variables from the start.
        node_env = {**os.environ, **stack.env()}
        for attempt in (1, 2):
            started("ray-head", start_ray_head(stack.ray_port, stack.dashboard_port, cpus_per_node,
                                               work / "ray-head.log", node_env))
            started("ray-worker", start_ray_worker(f"{LOOPBACK}:{stack.ray_port}", cpus_per_node,
                                                   work / "ray-worker.log", node_env))
            try:
                wait_ray_nodes(stack.dashboard_url, 2, procs=tuple(procs[-2:]))
                break
            except StackError as e:
                # A loaded machine can make a head's own daemons give up before its raylet registers
                # (ray_client_server waits 30 s): start the two nodes once more.
                if attempt == 2 or "exited" not in str(e):
                    raise
                log(f"stack: {e}; starting the Ray nodes again")
                for proc in (procs.pop(), procs.pop()):
                    stop(proc)
        wait_job_submission(node_env)
        log("stack: 2 Ray nodes alive, job submission answers")
    except BaseException:
        for proc in reversed(procs):
            stop(proc)
        Path(work, "state.json").unlink(missing_ok=True)
        raise
    return stack


def down(directory: str = ".stack", log=print) -> int:
    """Stop every process of the stack in `directory` by its PID, Ray first; returns how many ran."""
    stack = Stack.load(directory)
    if stack is None:
        return 0
    running = 0
    for name, pid in reversed(list(stack.pids.items())):
        if service_running(pid, name):
            running += 1
            log(f"stack: stopping {name} (PID {pid})")
            stop_pid(pid)
    Path(directory, "state.json").unlink()
    forget_ray_address(stack.ray_port)
    return running


def forget_ray_address(port: int) -> None:
    """Remove Ray's record of the current cluster (`ray_current_cluster` in its temp dir) when it
    names this stack's head (by its GCS port: Ray records the machine's address, not 127.0.0.1), as
    `ray stop` does: a bare `ray.init()` would otherwise try to join the stopped cluster."""
    from ray._common.utils import get_ray_address_file, reset_ray_address

    try:
        recorded = Path(get_ray_address_file(None)).read_text().strip()
    except OSError:
        return
    if recorded.rpartition(":")[2] == str(port):
        reset_ray_address()


def status(directory: str = ".stack") -> dict:
    stack = Stack.load(directory)
    if stack is None:
        return {"running": False}
    services = {name: service_running(pid, name) for name, pid in stack.pids.items()}
    nodes = None
    try:
        nodes = ray_alive_nodes(stack.dashboard_url) if services.get("ray-head") else 0
    except (OSError, ValueError, KeyError):
        pass
    return {"running": all(services.values()), "services": services, "ray_nodes": nodes,
            "urls": {"s3": stack.s3_url, "mlflow": stack.mlflow_url, "ray_dashboard": stack.dashboard_url}}


def export_lines(stack: Stack) -> str:
    return "\n".join(f"export {k}={v}" for k, v in stack.env().items())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m infra.local_stack", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=["up", "down", "status", "env"])
    p.add_argument("--dir", default=".stack", help="state, logs and the MLflow database (default .stack)")
    for name, default in (("s3", 9000), ("mlflow", 5000), ("ray", 6379), ("dashboard", 8265)):
        p.add_argument(f"--{name}-port", type=int, default=default, help=f"default {default}; 0 = any free port")
    p.add_argument("--cpus-per-node", type=int, default=2, help="logical CPUs of each Ray node (default 2)")
    args = p.parse_args(argv)
    err = lambda m: (sys.stderr.write(m + "\n"), sys.stderr.flush())  # noqa: E731
    try:
        if args.command == "up":
            stack = up(args.dir, args.s3_port, args.mlflow_port, args.ray_port, args.dashboard_port,
                       args.cpus_per_node, log=err)
            err(f"stack: ready; MLflow UI {stack.mlflow_url}, Ray dashboard {stack.dashboard_url}. "
                f"Point the CLIs at it with:")
            print(export_lines(stack))
        elif args.command == "down":
            err(f"stack: {down(args.dir, log=err)} process(es) stopped")
        elif args.command == "env":
            stack = Stack.load(args.dir)
            if stack is None:
                raise StackError(f"no stack recorded in {args.dir}; run 'up' first")
            print(export_lines(stack))
        else:
            print(json.dumps(status(args.dir), indent=1))
    except StackError as e:
        err(f"error: {e}")
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
