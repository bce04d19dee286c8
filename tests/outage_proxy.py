"""A TCP proxy on 127.0.0.1 in front of a real server (S3 endpoint, MLflow server) that can make the
server unreachable: during an outage it closes every open connection and refuses new ones (nothing
listens on its port), as a crashed or partitioned server looks to a client; the server itself keeps
its state."""
from __future__ import annotations

import socket
import threading
import time

from infra.local_stack import LOOPBACK, free_port


class OutageProxy:
    def __init__(self, target_port: int):
        self.target_port = target_port
        self.port = free_port()
        self.requests = 0  # HTTP requests seen from clients
        self.outages = 0
        self.outage_after: int | None = None
        self.outage_seconds: float | None = None
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._stopped = False
        self._up = threading.Event()
        self._listen()

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def _listen(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((LOOPBACK, self.port))
        listener.listen(64)
        self._listener = listener
        self._up.set()
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # closed by an outage or stop()
            try:
                upstream = socket.create_connection((LOOPBACK, self.target_port))
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, upstream]
            threading.Thread(target=self._pipe, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, False), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, from_client: bool) -> None:
        try:
            while data := src.recv(65536):
                if from_client:
                    self._count(data)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def _count(self, data: bytes) -> None:
        with self._lock:
            self.requests += data.count(b" HTTP/1.1\r\n")
            trigger = self.outage_after is not None and self.requests >= self.outage_after
            if trigger:
                self.outage_after = None
        if trigger:
            threading.Thread(target=self.outage, args=(self.outage_seconds,), daemon=True).start()

    def outage_at_request(self, count: int, seconds: float | None) -> None:
        """Go down once `count` client requests have been seen, for `seconds` (None: for good)."""
        self.outage_after, self.outage_seconds = self.requests + count, seconds

    def outage(self, seconds: float | None) -> None:
        """Close the listener and every connection; come back after `seconds` (None: never)."""
        self.outages += not self._stopped
        self._up.clear()
        try:  # wakes the thread blocked in accept(): after close() alone it would accept one more client
            self._listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._listener.close()
        with self._lock:
            conns, self._conns = self._conns, []
        for s in conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
                s.close()
            except OSError:
                pass
        if seconds is not None:
            time.sleep(seconds)
            self.restore()

    def restore(self) -> None:
        """End an outage: listen again on the same port."""
        if not self._stopped and not self._up.is_set():
            self._listen()

    def wait_up(self, timeout: float = 60) -> bool:
        return self._up.wait(timeout)

    def stop(self) -> None:
        self._stopped = True
        self.outage(None)
