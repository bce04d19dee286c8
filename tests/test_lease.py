"""One run per output at a time: the lease under `_manifest/`, on a local folder and on S3 (moto_server,
conditional writes as real S3 does them), including the takeover of a crashed run's lease."""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time

import pytest

from pipelines import segment, storage
from pipelines.lease import EXPIRY_S, LEASE, OutputBusy, OutputLease


@pytest.fixture(params=["local", "s3"])
def output(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "out")
    client = request.getfixturevalue("s3_client")
    bucket = f"lease-{time.monotonic_ns()}"
    client.create_bucket(Bucket=bucket)
    return f"s3://{bucket}/night"


def test_a_second_run_is_refused_while_the_first_holds_the_output(output):
    with OutputLease(output, "segment-first") as first:
        with pytest.raises(OutputBusy, match="held by run segment-first"):
            OutputLease(output, "segment-second").acquire()
        assert json.loads(storage.read_bytes(storage.join(output, LEASE)))["id"] == first.holder["id"]
    assert not storage.exists(storage.join(output, LEASE))  # released at the end
    with OutputLease(output, "segment-second") as second:
        assert second.took_over is None


def test_of_runs_starting_together_exactly_one_gets_the_output(output):
    won, refused, barrier = [], [], threading.Barrier(4)

    def start(i):
        lease = OutputLease(output, f"run-{i}")
        barrier.wait()
        try:
            lease.acquire()
            won.append(lease)
        except OutputBusy:
            refused.append(i)

    threads = [threading.Thread(target=start, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1 and len(refused) == 3
    won[0].release()


def test_a_crashed_runs_lease_is_taken_over_and_a_live_one_is_renewed(output):
    crashed = {"run": "segment-crashed", "host": "gone", "pid": 1, "id": "x", "renewed": time.time() - EXPIRY_S - 1}
    storage.write_bytes(storage.join(output, LEASE), json.dumps(crashed).encode())
    lease = OutputLease(output, "segment-next", renew_s=0.05)
    lease.acquire()
    try:
        assert lease.took_over["run"] == "segment-crashed"
        def renewed() -> float:
            return json.loads(storage.read_bytes(storage.join(output, LEASE)))["renewed"]

        first, deadline = renewed(), time.monotonic() + 30
        # Renewed every 0.05 s; a loaded machine (two pytest workers, Ray beside them) may take longer.
        while renewed() <= first and time.monotonic() < deadline:
            time.sleep(0.1)
        assert renewed() > first
    finally:
        lease.release()


def test_the_lease_of_a_run_gone_from_this_machine_is_taken_over_at_once(output):
    """A rerun right after a kill (or an outage that kept the lease from being released) need not wait."""
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    held = {"run": "segment-killed", "host": socket.gethostname(), "pid": int(gone.stdout), "id": "x",
            "renewed": time.time()}
    storage.write_bytes(storage.join(output, LEASE), json.dumps(held).encode())
    with OutputLease(output, "segment-rerun") as lease:
        assert lease.took_over["run"] == "segment-killed"


def test_segment_refuses_an_output_another_run_holds(run, capsys, tmp_path, model_dir):
    output = str(tmp_path / "out")
    with OutputLease(output, "segment-nightly"):
        assert run(segment.main, ["--model", str(model_dir), "--input", str(tmp_path), "--output", output]) == 2
    (line,) = [x for x in capsys.readouterr().err.splitlines() if "error" in x]
    assert "held by run segment-nightly" in line
