"""What every pipeline CLI shares: clear one-line errors, stderr progress, the JSON summary line."""
from __future__ import annotations

import json
import os
import socket
import sys
import time

from deeplab_core.data.codec import DecodeError
from deeplab_core.data.layouts import LayoutError

from pipelines.storage import StorageError

# Errors whose message is the whole story for the user: printed on one line, exit 2.
USER_ERRORS = (LayoutError, StorageError, DecodeError, ValueError, FileNotFoundError)


def log(message: str) -> None:
    # Not print(): Ray Train patches print in workers and would echo each line twice.
    sys.stderr.write(message + "\n")
    sys.stderr.flush()


# The process's stdout while run() sends every other write to stderr.
_stdout = None


def output(text: str) -> None:
    """A CLI's own output (a table, a config, the summary): stdout."""
    print(text, file=_stdout or sys.stdout, flush=True)


def emit_summary(summary: dict) -> None:
    """The last stdout line of every CLI: one JSON object that schedulers and scripts read."""
    output(json.dumps(summary, sort_keys=True))


def user_error(error: BaseException) -> BaseException | None:
    """The error the user should read behind `error`, also when Ray wrapped it: a task's exception
    reaches the driver as RayTaskError with `.cause`; other wrappers chain it as `__cause__`. (Ray
    Data loses the type altogether, hence segment's `unavailable` row status.)"""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        cause = getattr(error, "cause", None)
        if isinstance(cause, BaseException):
            error = cause
        elif isinstance(error, USER_ERRORS):
            return error
        else:
            error = error.__cause__
    return None


def run(main, argv=None) -> int:
    """A CLI process's entry point. From here on stdout carries only `output()`: anything else
    printed there (Ray's lines forwarded from workers and raylets, which come at any time, also
    after the summary; MLflow's run links) goes to stderr, so the summary stays the last line."""
    global _stdout
    _stdout = sys.stdout
    sys.stdout = sys.stderr
    try:
        return main(argv) or 0
    except Exception as e:
        shown = user_error(e)
        if shown is None:
            raise
        log(f"error: {shown}")
        return 2


class Progress:
    """Throttled 'name: done/total ...' lines on stderr for long work."""

    def __init__(self, name: str, total: int, unit: str = "items", every: float = 2.0):
        self.name, self.total, self.unit, self.every = name, total, unit, every
        self.start = self.last = time.monotonic()

    def update(self, done: int, extra: str = "", force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last < self.every and done < self.total:
            return
        self.last = now
        rate = done / max(now - self.start, 1e-9)
        pct = 100.0 * done / self.total if self.total else 100.0
        log(f"{self.name}: {done}/{self.total} {self.unit} ({pct:.0f}%), {rate:.1f} {self.unit}/s {extra}".rstrip())


def recorded_cluster() -> str | None:
    """The cluster that `ray start` recorded on this machine (the head of `ray up`, where `ray submit`,
    `ray exec` and `ray attach` run scripts; any node of it) when something still answers at its
    address; None when there is no record or the cluster is gone (a stale record is never joined)."""
    from ray._private.utils import read_ray_address

    recorded = read_ray_address()
    if not recorded:
        return None
    host, _, port = recorded.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=2):
            return recorded
    except (OSError, ValueError):
        log(f"ray: ignoring Ray's record of a cluster at {recorded}: nothing answers there")
        return None


def init_ray(min_cpus: float = 0, log_to_driver: bool = True) -> None:
    """Join a cluster or start a local instance, saying which in one line: the cluster named by
    RAY_ADDRESS (`ray job submit` sets it; `local` forces a local instance), else the live cluster
    recorded on this machine, else a local instance. Locally, Ray's logical CPUs are at least
    `min_cpus` so that training workers and Ray Data tasks can both be scheduled on a small machine
    (logical CPUs are accounting, not cores). The one way every CLI, benchmark and test starts Ray."""
    import ray

    if ray.is_initialized():
        return
    named = os.environ.get("RAY_ADDRESS") or None
    address, why = (named, "RAY_ADDRESS") if named else (recorded_cluster(), "recorded on this machine")
    if address and address != "local":
        context = ray.init(address=address, log_to_driver=log_to_driver)
        log(f"ray: joined the cluster at {context.address_info['gcs_address']} ({why}), "
            f"{len(machines())} machine(s), {ray.cluster_resources().get('CPU', 0):g} CPUs")
        return
    # The dashboard stays on: Ray Train V2 watches its runs through the State API it serves.
    cpus = max(os.cpu_count() or 1, int(-(-min_cpus // 1)))
    ray.init(address="local", num_cpus=cpus, log_to_driver=log_to_driver)
    log(f"ray: started a local instance with {cpus} logical CPUs "
        f"({'RAY_ADDRESS=local' if named else 'no RAY_ADDRESS, no live cluster recorded on this machine'})")


def machines() -> set[str]:
    """The addresses of the machines the cluster's live nodes run on (several raylets of one machine
    share one)."""
    import ray

    return {node["NodeManagerAddress"] for node in ray.nodes() if node["Alive"]}


def fit_actors(wanted: int, reserved: float, name: str, batches: int | None = None) -> int:
    """At most as many one-CPU actors as the cluster's CPUs leave after `reserved`, and at least one:
    an actor pool that takes every CPU starves the tasks that feed it. With `batches` (the blocks the
    pool will get), no more actors than that: more would start, load their model and idle."""
    import ray

    if batches is not None:
        wanted = min(wanted, max(1, batches))
    room = max(1, int(ray.cluster_resources().get("CPU", 1) - reserved))
    if wanted > room:
        log(f"{name}: {wanted} actors requested, the cluster has room for {room}; using {room}")
    return min(wanted, room)
