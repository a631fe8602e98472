"""A TCP proxy that delays every chunk it forwards (a slow bucket, a congested link), on loopback.

Real bytes of a real S3 conversation pass through unchanged, only later: each chunk, in either
direction, waits a latency drawn from the test's ``random.Random`` before it is forwarded.
"""

from __future__ import annotations

import random
import socket
import threading
import time


class SlowProxy:
    def __init__(self, upstream_port: int, rng: random.Random, delay_s: tuple[float, float]) -> None:
        self.upstream_port, self.delay_s = upstream_port, delay_s
        self._rng, self._rng_lock = rng, threading.Lock()
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.chunks = 0
        self.delayed_s = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, name="slow-proxy", daemon=True)

    def __enter__(self) -> "SlowProxy":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._sock.close()

    def _delay(self) -> None:
        with self._rng_lock:
            d = self._rng.uniform(*self.delay_s)
            self.chunks += 1
            self.delayed_s += d
        time.sleep(d)

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._sock.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            except OSError:
                client.close()
                continue
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                self._delay()
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()
