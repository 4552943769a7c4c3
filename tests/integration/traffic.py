"""Real TCP traffic between test namespaces, to prove where a connection landed.

``Listeners`` runs one helper process inside a netns (``ip netns exec``, bounded by
``timeout``) that listens on several ports (IPv4 and IPv6, optionally IP_TRANSPARENT) and
answers every connection with one JSON line: the port it was accepted on, the local and
peer addresses, and the original destination from ``SO_ORIGINAL_DST`` (None when the
connection was not NATed: the kernel says ENOENT). ``connect`` runs a client in a netns,
optionally as another uid/gid through ``setpriv`` (with /usr/bin/python3: the pyenv shim
cannot run as uid 1337), and returns that JSON answer.
"""

from __future__ import annotations

import json
import subprocess

PYTHON = "/usr/bin/python3"

LISTENER = r"""
import json, selectors, socket, struct, sys, time
ports = [int(p.rstrip("t")) for p in sys.argv[1].split(",")]
transparent = {int(p.rstrip("t")) for p in sys.argv[1].split(",") if p.endswith("t")}
deadline = time.time() + float(sys.argv[2])
sel = selectors.DefaultSelector()
for fam, any_ in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
    for port in ports:
        s = socket.socket(fam, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if fam == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        if port in transparent:
            level = socket.SOL_IP if fam == socket.AF_INET else socket.IPPROTO_IPV6
            s.setsockopt(level, 19 if fam == socket.AF_INET else 75, 1)  # IP(V6)_TRANSPARENT
        s.bind((any_, port)); s.listen(16); s.setblocking(False)
        sel.register(s, selectors.EVENT_READ, (fam, port))
print("ready", flush=True)
def orig_dst(c, fam):
    try:
        if fam == socket.AF_INET:
            raw = c.getsockopt(socket.SOL_IP, 80, 16)
            return [socket.inet_ntoa(raw[4:8]), struct.unpack_from("!H", raw, 2)[0]]
        raw = c.getsockopt(socket.IPPROTO_IPV6, 80, 28)
        return [socket.inet_ntop(socket.AF_INET6, raw[8:24]), struct.unpack_from("!H", raw, 2)[0]]
    except OSError:
        return None
while time.time() < deadline:
    for key, _ in sel.select(timeout=0.2):
        fam, port = key.data
        c, peer = key.fileobj.accept()
        info = {"port": port, "local": list(c.getsockname()[:2]), "peer": list(peer[:2]),
                "orig": orig_dst(c, fam)}
        c.sendall((json.dumps(info) + "\n").encode()); c.close()
"""

CLIENT = r"""
import json, socket, sys
host, port = sys.argv[1], int(sys.argv[2])
fam = socket.AF_INET6 if ":" in host else socket.AF_INET
s = socket.socket(fam, socket.SOCK_STREAM); s.settimeout(5)
try:
    s.connect((host, port))
    print(s.makefile().readline().strip() or json.dumps({"error": "no answer"}))
except OSError as e:
    print(json.dumps({"error": str(e)}))
"""


class Listeners:
    """``with Listeners(ns, ["15001", "15006t"]) as l:`` (``t``: IP_TRANSPARENT)."""

    def __init__(self, ns: str, ports: list, lifetime: float = 60.0) -> None:
        self.ns, self.ports, self.lifetime = ns, ports, lifetime
        self.proc = None

    def __enter__(self) -> Listeners:
        self.proc = subprocess.Popen(
            ["timeout", str(int(self.lifetime) + 5), "ip", "netns", "exec", self.ns, PYTHON, "-c",
             LISTENER, ",".join(self.ports), str(self.lifetime)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        if line.strip() != "ready":
            self.proc.kill()
            raise RuntimeError(f"listener in {self.ns} failed: {line!r} {self.proc.stderr.read()}")
        return self

    def __exit__(self, *exc) -> None:
        self.proc.kill()  # our own child, by its handle
        self.proc.wait(timeout=10)


def connect(ns: str, host: str, port: int, uid: int | None = None, gid: int | None = None) -> dict:
    cmd = ["ip", "netns", "exec", ns]
    if uid is not None:
        cmd += ["setpriv", f"--reuid={uid}", f"--regid={gid if gid is not None else uid}",
                "--clear-groups"]
    cmd += [PYTHON, "-c", CLIENT, host, str(port)]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
    if p.returncode != 0:
        raise RuntimeError(f"client failed: {p.stderr}")
    return json.loads(p.stdout)
