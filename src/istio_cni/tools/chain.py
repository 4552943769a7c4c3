"""A small libcni-like runtime: run a conflist's plugins in order against a netns.

ADD threads ``prevResult`` from plugin to plugin; CHECK and DEL hand every plugin the
cached final ADD result, DEL in reverse order (CNI SPEC.md, "Network configuration list
runtime"). Plugins are exec'd with the CNI env and the netconf on stdin, optionally
inside a "host" network namespace so tests never touch the machine's own.
"""

from __future__ import annotations

import json
import os
import subprocess


class PluginFailed(Exception):
    def __init__(self, plugin: str, rc: int, stdout: str, stderr: str) -> None:
        self.plugin, self.rc, self.stdout, self.stderr = plugin, rc, stdout, stderr
        try:
            self.error = json.loads(stdout)
        except ValueError:
            self.error = None
        super().__init__(f"{plugin} exited {rc}: {stdout.strip()} {stderr.strip()[-400:]}")


def find_plugin(ptype: str, cni_path: str) -> str:
    for d in cni_path.split(":"):
        p = os.path.join(d, ptype)
        if os.access(p, os.X_OK):
            return p
    raise FileNotFoundError(f"plugin {ptype!r} not found in CNI_PATH={cni_path}")


def plugin_conf(conflist: dict, plugin: dict, prev: dict | None) -> dict:
    conf = dict(plugin)
    conf["cniVersion"] = conflist["cniVersion"]
    conf["name"] = conflist["name"]
    if prev is not None:
        conf["prevResult"] = prev
    return conf


def exec_plugin(
    ptype: str,
    command: str,
    conf: dict,
    *,
    container_id: str,
    netns: str,
    ifname: str,
    cni_path: str,
    cni_args: str = "",
    host_netns: str | None = None,
    extra_env: dict | None = None,
    timeout: float = 60,
) -> dict | None:
    env = {
        "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": container_id,
        "CNI_NETNS": netns,
        "CNI_IFNAME": ifname,
        "CNI_PATH": cni_path,
        "CNI_ARGS": cni_args,
    }
    env.update(extra_env or {})
    argv = [find_plugin(ptype, cni_path)]
    if host_netns:
        argv = ["nsenter", f"--net={host_netns}", *argv]
    p = subprocess.run(argv, input=json.dumps(conf).encode(), env=env, capture_output=True, timeout=timeout)
    out, err = p.stdout.decode(), p.stderr.decode()
    if p.returncode != 0:
        raise PluginFailed(ptype, p.returncode, out, err)
    return json.loads(out) if out.strip() else None


class Chain:
    """One attachment (container id + netns + ifname) of a conflist."""

    def __init__(
        self,
        conflist: dict,
        *,
        container_id: str,
        netns: str,
        ifname: str = "eth0",
        cni_path: str = "/usr/lib/cni",
        cni_args: str = "",
        host_netns: str | None = None,
        extra_env: dict | None = None,
        run_in_caller_netns: tuple = ("istio-cni",),
    ) -> None:
        # Plugins named in run_in_caller_netns run in the caller's netns instead of host_netns:
        # istio-cni only reads the API (on 127.0.0.1 in tests) and enters the pod netns; it never
        # changes the netns it runs in, unlike bridge, which must stay in the stand-in "node".
        self.conflist = conflist
        self.caller_netns_plugins = tuple(run_in_caller_netns)
        self.kw = dict(
            container_id=container_id,
            netns=netns,
            ifname=ifname,
            cni_path=cni_path,
            cni_args=cni_args,
            host_netns=host_netns,
            extra_env=extra_env,
        )
        self.result: dict | None = None
        self.per_plugin: list[tuple[str, dict | None]] = []

    def _kw(self, ptype: str) -> dict:
        if ptype in self.caller_netns_plugins:
            return {**self.kw, "host_netns": None}
        return self.kw

    def add(self) -> dict | None:
        prev = None
        self.per_plugin = []
        for plugin in self.conflist["plugins"]:
            prev = exec_plugin(
                plugin["type"], "ADD", plugin_conf(self.conflist, plugin, prev), **self._kw(plugin["type"])
            )
            self.per_plugin.append((plugin["type"], prev))
        self.result = prev
        return prev

    def check(self) -> None:
        for plugin in self.conflist["plugins"]:
            exec_plugin(
                plugin["type"], "CHECK", plugin_conf(self.conflist, plugin, self.result), **self._kw(plugin["type"])
            )

    def delete(self) -> None:
        errors = []
        for plugin in reversed(self.conflist["plugins"]):
            try:
                exec_plugin(
                    plugin["type"], "DEL", plugin_conf(self.conflist, plugin, self.result), **self._kw(plugin["type"])
                )
            except PluginFailed as e:  # keep going: DEL is best effort across the chain
                errors.append(e)
        if errors:
            raise errors[0]


def bridge_conflist(
    version: str, subnet: str, bridge: str, ipam_dir: str, extra: list | None = None, name: str = "icni-test"
) -> dict:
    """loopback + bridge(host-local) (+ extra plugins) as a conflist of ``version``."""
    plugins = [
        {"type": "loopback"},
        {
            "type": "bridge",
            "bridge": bridge,
            "isGateway": True,
            "ipMasq": False,
            "ipam": {
                "type": "host-local",
                "dataDir": ipam_dir,
                "ranges": [[{"subnet": subnet}]],
                "routes": [{"dst": "0.0.0.0/0"}],
            },
        },
    ]
    plugins += extra or []
    return {"cniVersion": version, "name": name, "plugins": plugins}
