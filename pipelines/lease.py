"""One batch run per output at a time: a lease object under the output's `_manifest/`.

A run creates `_manifest/_lease.json` with a conditional write (S3 `If-None-Match: *`; local: an
exclusive hard link), so of two runs starting together exactly one gets it; the other refuses in one
line naming the holder. The holder renews it every RENEW_S seconds while it lives and deletes it at
the end. A lease not renewed for EXPIRY_S seconds belongs to a run that crashed (or whose machine
did), and so does one whose run was on this machine and is no longer alive: the next run takes it
over, so a crash never blocks the next night. (Two runs that find the
same expired lease within the same moment may both take it over: the one case left to the operator.)
"""
from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
import warnings

from pipelines import storage

LEASE = "_manifest/_lease.json"
RENEW_S = 30.0
EXPIRY_S = 300.0  # ten missed renewals


class OutputBusy(ValueError):
    """Another live run holds the output."""


class OutputLease:
    """`with OutputLease(output, "segment-20261124-0200"):` holds the output for the block."""

    def __init__(self, output: str, run_name: str, expiry_s: float = EXPIRY_S, renew_s: float = RENEW_S):
        self.uri = storage.join(output, LEASE)
        self.expiry_s, self.renew_s = expiry_s, renew_s
        self.holder = {"run": run_name, "host": socket.gethostname(), "pid": os.getpid(), "id": uuid.uuid4().hex}
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None
        self.took_over: dict | None = None

    def _body(self) -> bytes:
        return json.dumps({**self.holder, "renewed": time.time()}).encode()

    def _current(self) -> dict | None:
        try:
            return json.loads(storage.read_bytes(self.uri))
        except storage.StorageUnavailable:
            raise
        except (storage.StorageError, ValueError):  # gone meanwhile, or torn by a crash mid-write
            return None

    def _abandoned(self, held: dict | None) -> bool:
        """A lease not renewed for expiry_s, or one whose run was on this machine and is gone (a rerun
        right after a kill or an outage need not wait out the expiry)."""
        if not held or "renewed" not in held or time.time() - held["renewed"] > self.expiry_s:
            return True
        if held.get("host") != self.holder["host"]:
            return False
        try:
            os.kill(int(held["pid"]), 0)
        except ProcessLookupError:
            return True
        except (PermissionError, ValueError, KeyError):
            return False
        return False

    def acquire(self) -> None:
        if not storage.create_exclusive(self.uri, self._body()):
            held = self._current()
            if not self._abandoned(held):
                age = time.time() - held["renewed"]
                raise OutputBusy(f"{self.uri.rsplit('/_manifest/', 1)[0]} is held by run {held.get('run')} "
                                 f"(host {held.get('host')}, pid {held.get('pid')}, renewed {age:.0f} s ago); "
                                 f"a lease not renewed for {self.expiry_s:.0f} s is taken over")
            storage.delete(self.uri)  # a crashed run's: taken over, unless another run is quicker
            if not storage.create_exclusive(self.uri, self._body()):
                raise OutputBusy(f"{self.uri}: another run took over the expired lease first")
            self.took_over = held
        self._renewer = threading.Thread(target=self._renew, daemon=True, name="output-lease")
        self._renewer.start()

    def _renew(self) -> None:
        while not self._stop.wait(self.renew_s):
            try:
                held = self._current()
                if held is None or held.get("id") != self.holder["id"]:
                    return  # taken over: this run was presumed dead; its rows still commit as usual
                storage.write_bytes(self.uri, self._body())
            except storage.StorageError:
                pass  # an outage: the next renewal tries again; expiry is ten renewals away

    def release(self) -> None:
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join()
        try:
            held = self._current()
            if held is not None and held.get("id") == self.holder["id"]:
                storage.delete(self.uri)
        except (storage.StorageError, OSError) as e:  # the store is down: the lease ends with its expiry
            warnings.warn(f"{self.uri}: lease not released ({str(e).splitlines()[0][:200]})", RuntimeWarning,
                          stacklevel=2)

    def __enter__(self) -> OutputLease:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
