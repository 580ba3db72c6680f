"""A TCP proxy on loopback that can go silent: what a partition, a NAT that forgot a flow or a
failover behind a load balancer looks like to a client. Silenced, it keeps every connection open
and forwards nothing (no FIN, no RST: the client's reads simply never return); healed, it forwards
new connections again, while those that went silent stay silent, as a forgotten flow does."""

from __future__ import annotations

import select
import socket
import threading


class SilentProxy:
    def __init__(self, target_port: int) -> None:
        self.target = ("127.0.0.1", target_port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.generation = 0  # bumped by each silence: connections of an older one stay mute
        self.silent = False
        self.sockets: list[socket.socket] = []
        self.lock = threading.Lock()
        self.closed = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def silence(self) -> None:
        with self.lock:
            self.silent = True
            self.generation += 1

    def heal(self) -> None:
        with self.lock:
            self.silent = False

    def close(self) -> None:
        self.closed.set()
        self.listener.close()
        with self.lock:
            for sock in self.sockets:
                sock.close()

    def _accept(self) -> None:
        while not self.closed.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            with self.lock:
                generation, silent = self.generation, self.silent
                self.sockets.append(client)
            if silent:
                continue  # accepted, and never answered
            upstream = socket.create_connection(self.target)
            with self.lock:
                self.sockets.append(upstream)
            threading.Thread(target=self._pump, args=(client, upstream, generation), daemon=True).start()

    def _pump(self, client: socket.socket, upstream: socket.socket, generation: int) -> None:
        peers = {client: upstream, upstream: client}
        while not self.closed.is_set():
            try:
                readable, _, _ = select.select(list(peers), [], [], 0.5)
                for sock in readable:
                    data = sock.recv(65536)
                    if not data:
                        client.close()
                        upstream.close()
                        return
                    if self.generation == generation:  # silenced since: swallowed, not forwarded
                        peers[sock].sendall(data)
            except OSError:
                return
