"""A fault-injecting loopback TCP proxy in front of each broker's client listener.

One process (``python -m app.faults.proxy``, started by ``LocalCluster.up``) holds
one listener per broker: ``LISTEN=TARGET`` pairs of loopback ports. Brokers
advertise the LISTEN port, so every client connection (bootstrap and per-broker)
goes through it; inter-broker and controller traffic use their own listeners and
never pass here. It runs in its own process (new session) so it outlives the CLI
that started it and keeps forwarding while the test or operator process changes
modes; ``kafka down`` stops it by the pid in ``cluster.json``.

Modes, per listener, switched at runtime through a control port on loopback (one
JSON request line, one JSON reply line; see ``control``):

- ``heal``: forward both ways (the normal state).
- ``cut``: every open connection is reset (both sides closed) and the listener is
  closed, so new connections are refused (ECONNREFUSED) until ``heal``.
- ``blackhole``: connections stay open and new ones are accepted, but nothing is
  forwarded in either direction (bytes wait in socket buffers): requests get no
  answer, like packets dropped by a partition. On ``heal`` forwarding resumes.
- ``slow:MS``: every chunk, in either direction, is held ``MS`` milliseconds
  before it is forwarded (latency added per read, order kept).

A mode reply is sent only after the mode took effect (for ``cut``: connections
closed and listener gone), so a caller knows the fault is in place when
``control`` returns. Standard library only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import socket
import sys
from dataclasses import dataclass, field
from typing import Any

_CHUNK = 65536


@dataclass(frozen=True)
class Mode:
    """A parsed proxy mode: ``name`` in heal|cut|blackhole|slow, ``delay_ms`` for slow."""

    name: str
    delay_ms: int = 0

    def __str__(self) -> str:
        return f"slow:{self.delay_ms}" if self.name == "slow" else self.name


def parse_mode(text: str) -> Mode:
    """``heal | cut | blackhole | slow:MS`` (MS a positive integer) → Mode; ValueError otherwise."""
    name, _, arg = text.strip().partition(":")
    if name in ("heal", "cut", "blackhole") and not arg:
        return Mode(name)
    if name == "slow":
        if not arg.isdigit() or int(arg) <= 0:
            raise ValueError(f"slow needs a positive delay in milliseconds (slow:250), not {text!r}")
        return Mode("slow", int(arg))
    raise ValueError(f"unknown proxy mode {text!r}; choose heal, cut, blackhole or slow:MS")


def parse_route(text: str) -> tuple[int, int]:
    """``LISTEN=TARGET`` (two ports) → (listen, target)."""
    listen, sep, target = text.partition("=")
    if not sep or not listen.isdigit() or not target.isdigit():
        raise ValueError(f"a route is LISTEN_PORT=TARGET_PORT, not {text!r}")
    return int(listen), int(target)


def control(port: int, request: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
    """Send one request to a running proxy's control port and return its reply.

    Requests: ``{"cmd": "status"}`` → ``{"ok": true, "modes": {port: mode}, "conns": {...}}``;
    ``{"cmd": "mode", "port": LISTEN, "mode": "cut"}`` → ``{"ok": true, ...}`` once applied."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(json.dumps(request).encode() + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            buf += chunk
    reply = json.loads(buf or b"{}")
    if not isinstance(reply, dict):
        raise OSError(f"bad reply from proxy control port {port}: {buf!r}")
    return reply


@dataclass
class Listener:
    """One proxied port: its mode, its listening server and its live connections."""

    listen: int
    target: int
    mode: Mode = field(default_factory=lambda: Mode("heal"))
    server: asyncio.Server | None = None
    flowing: asyncio.Event = field(default_factory=asyncio.Event)
    conns: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = field(default_factory=set)
    accepted: int = 0

    async def open(self) -> None:
        if self.server is None:
            self.server = await asyncio.start_server(self._client, "127.0.0.1", self.listen, reuse_address=True)

    async def close_listener(self) -> None:
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 2)
            self.server = None

    async def set_mode(self, mode: Mode) -> None:
        self.mode = mode
        if mode.name == "blackhole":
            self.flowing.clear()
        else:
            self.flowing.set()
        if mode.name == "cut":
            await self.close_listener()
            for up, down in list(self.conns):
                for w in (up, down):
                    with contextlib.suppress(Exception):
                        w.transport.abort()
            self.conns.clear()
        else:
            await self.open()

    async def _client(self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        if self.mode.name == "cut":
            c_writer.transport.abort()
            return
        self.accepted += 1
        try:
            await self.flowing.wait()  # blackhole: accepted, but never even connected upstream
            if self.mode.name == "cut":
                c_writer.transport.abort()
                return
            u_reader, u_writer = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:
            c_writer.transport.abort()  # broker down: the client sees a reset, as without a proxy
            return
        pair = (u_writer, c_writer)
        self.conns.add(pair)
        try:
            await asyncio.gather(self._pump(c_reader, u_writer), self._pump(u_reader, c_writer))
        finally:
            self.conns.discard(pair)
            for w in pair:
                with contextlib.suppress(Exception):
                    w.transport.abort()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                await self.flowing.wait()
                data = await reader.read(_CHUNK)
                if not data:
                    break
                if self.mode.name == "slow":
                    await asyncio.sleep(self.mode.delay_ms / 1000)
                await self.flowing.wait()  # blackholed while this chunk was in hand: hold it
                writer.write(data)
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.transport.abort()


class ProxyServer:
    """All listeners of one proxy process plus its control server."""

    def __init__(self, routes: list[tuple[int, int]], control_port: int) -> None:
        self.listeners = {listen: Listener(listen, target) for listen, target in routes}
        self.control_port = control_port

    async def serve(self) -> None:
        for lst in self.listeners.values():
            lst.flowing.set()
            await lst.open()
        ctl = await asyncio.start_server(self._control, "127.0.0.1", self.control_port, reuse_address=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        print(f"proxy: listening {sorted(self.listeners)}, control on {self.control_port}", flush=True)
        await stop.wait()
        ctl.close()
        for lst in self.listeners.values():
            await lst.set_mode(Mode("cut"))

    def status(self) -> dict[str, Any]:
        return {
            "ok": True,
            "modes": {str(p): str(lst.mode) for p, lst in self.listeners.items()},
            "conns": {str(p): len(lst.conns) for p, lst in self.listeners.items()},
            "accepted": {str(p): lst.accepted for p, lst in self.listeners.items()},
        }

    async def _control(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await reader.readline()
            reply = await self.handle(json.loads(line or b"{}"))
        except (ValueError, KeyError, TypeError) as exc:
            reply = {"ok": False, "error": str(exc)}
        writer.write(json.dumps(reply).encode() + b"\n")
        with contextlib.suppress(OSError):
            await writer.drain()
        writer.close()

    async def handle(self, req: dict[str, Any]) -> dict[str, Any]:
        if req.get("cmd") == "status":
            return self.status()
        if req.get("cmd") == "mode":
            port = int(req["port"])
            if port not in self.listeners:
                return {"ok": False, "error": f"no proxy listens on {port} (ports {sorted(self.listeners)})"}
            mode = parse_mode(str(req["mode"]))
            await self.listeners[port].set_mode(mode)
            print(f"proxy: {port} -> {mode}", flush=True)
            return self.status()
        return {"ok": False, "error": f"unknown request {req!r}"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app.faults.proxy", description=__doc__.splitlines()[0])
    parser.add_argument("--control-port", type=int, required=True)
    parser.add_argument("--cluster-dir", default="", help="the cluster's data dir (lets tools identify this proxy)")
    parser.add_argument("routes", nargs="+", help="LISTEN_PORT=TARGET_PORT, one per broker")
    args = parser.parse_args(argv)
    try:
        routes = [parse_route(r) for r in args.routes]
    except ValueError as exc:
        parser.error(str(exc))
    try:
        asyncio.run(ProxyServer(routes, args.control_port).serve())
    except OSError as exc:
        print(f"proxy: {exc}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
