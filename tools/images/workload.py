#!/usr/bin/python3
"""The test workload of the node tier (image localhost/istio-cni-workload, Debian's python3).

  workload app   [--port 8080]                 the application: listens on --port
  workload proxy [--ports 15001,15006,15021]   the stand-in for Envoy (the pod runs it as uid 1337)
  workload connect HOST PORT [--timeout 5]     connect out once, print what the listener answered

Every listener answers each connection with one JSON line and closes it:
  {"listener": <port that accepted>, "original": "<ip>:<port>" | null, "peer": "<ip>:<port>"}
where ``original`` is the connection's SO_ORIGINAL_DST (the destination before NAT redirected
it; null when conntrack has no entry). So a client learns from the answer which listener got its
connection and where it was meant to go: exactly what a redirect test must observe.
"""

from __future__ import annotations

import argparse
import json
import selectors
import signal
import socket
import struct
import sys
import time

SO_ORIGINAL_DST = 80  # linux/netfilter_ipv4.h


def original_dst(conn: socket.socket) -> str | None:
    try:
        raw = conn.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
    except OSError:
        return None
    return f"{socket.inet_ntoa(raw[4:8])}:{struct.unpack_from('!H', raw, 2)[0]}"


def serve(ports: list[int], lifetime: float) -> int:
    # PID 1 of its container: the kernel ignores signals it has no handler for, so without this
    # every pod deletion would wait out its grace period.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    sel = selectors.DefaultSelector()
    for port in ports:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("0.0.0.0", port))
        s.listen(64)
        sel.register(s, selectors.EVENT_READ, port)
    print(f"workload: listening on {ports}", flush=True)
    end = time.monotonic() + lifetime  # bounded: a leaked container does not live forever
    while time.monotonic() < end:
        for key, _ in sel.select(1.0):
            conn, peer = key.fileobj.accept()
            with conn:
                answer = {"listener": key.data, "original": original_dst(conn), "peer": f"{peer[0]}:{peer[1]}"}
                conn.settimeout(2)
                try:
                    conn.sendall((json.dumps(answer) + "\n").encode())
                except OSError:
                    pass
            print(f"workload: {json.dumps(answer)}", flush=True)
    return 0


def connect(host: str, port: int, timeout: float) -> int:
    try:
        with socket.create_connection((host, port), timeout=timeout) as c:
            data = b""
            while not data.endswith(b"\n") and len(data) < 4096:
                chunk = c.recv(4096)
                if not chunk:
                    break
                data += chunk
    except OSError as e:
        print(json.dumps({"error": f"connect {host}:{port}: {e}"}))
        return 1
    line = data.decode(errors="replace").strip()
    print(line if line else json.dumps({"error": f"{host}:{port} closed without an answer"}))
    return 0 if line else 1


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="workload")
    sub = p.add_subparsers(dest="cmd", required=True)
    app = sub.add_parser("app")
    app.add_argument("--port", type=int, default=8080)
    proxy = sub.add_parser("proxy")
    proxy.add_argument("--ports", default="15001,15006,15021")
    for sp in (app, proxy):
        sp.add_argument("--lifetime", type=float, default=3600.0)
    c = sub.add_parser("connect")
    c.add_argument("host")
    c.add_argument("port", type=int)
    c.add_argument("--timeout", type=float, default=5.0)
    a = p.parse_args(argv)
    if a.cmd == "connect":
        return connect(a.host, a.port, a.timeout)
    ports = [a.port] if a.cmd == "app" else [int(x) for x in a.ports.split(",")]
    return serve(ports, a.lifetime)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
