"""CNI network config files: find the one kubelet uses, splice our entry in, take it out again.

Pure functions over file names and parsed JSON, plus ``render`` for the byte layout. The
policy that decides *which* file to write lives in ``conflist.py``.

Layout styles (``CONFLIST_STYLE``):
  preserve  keep every key in its original order; a wrapped ``.conf`` keeps its own name and
            cniVersion (upstream forcing 0.3.1 broke primaries that lack it, istio/istio#32137)
  seed      the 2019 installer's jq layout (wrapped as plugins/name/cniVersion "0.3.0")
  upstream  today's Go installer (sorted keys, wrapped as cniVersion "0.3.1")
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .settings import Settings

PLUGIN_TYPE = "istio-cni"
WRAP_NAME = "k8s-pod-network"
CONF_EXTS = (".conf", ".conflist")
STYLES = ("preserve", "seed", "upstream")


# A CNI config is a few KiB; anything larger in the conf dir is refused unread.
MAX_CONF_BYTES = 1 << 20


class ConfigFileError(ValueError):
    """A config file or template is not what CNI expects; the message names it and why.

    Raised by ``read_conf`` it also carries ``file`` (the name) and ``fingerprint`` (a digest of
    the content, or of why it could not be read), so a caller can report each bad content once."""

    file: str | None = None
    fingerprint: str | None = None


# --- reading --------------------------------------------------------------------------------


def parse_bytes(data: bytes, name: str) -> dict:
    """Parse and validate one config file body; raises ConfigFileError naming ``name``."""
    try:
        conf = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise ConfigFileError(f"{name}: not JSON ({e})") from None
    if not isinstance(conf, dict):
        raise ConfigFileError(f"{name}: top level is {type(conf).__name__}, not an object")
    if name.endswith(".conflist") or "plugins" in conf:
        if "name" not in conf:
            raise ConfigFileError(f"{name}: conflist has no 'name'")
        plugins = conf.get("plugins")
        if not isinstance(plugins, list) or not plugins:
            raise ConfigFileError(f"{name}: conflist has no 'plugins' list (or it is empty)")
        for i, p in enumerate(plugins):
            if not isinstance(p, dict) or not isinstance(p.get("type"), str):
                raise ConfigFileError(f"{name}: plugins[{i}] has no string 'type'")
    elif not isinstance(conf.get("type"), str):
        raise ConfigFileError(f"{name}: .conf has no string 'type'")
    return conf


def read_conf(path: Path) -> dict:
    try:
        data = _read_bounded(path)
    except (OSError, ConfigFileError) as e:
        why = e.strerror if isinstance(e, OSError) else str(e)
        err = ConfigFileError(f"{path.name}: unreadable ({why})")
        err.file, err.fingerprint = path.name, f"unreadable: {why}"
        raise err from None
    try:
        return parse_bytes(data, path.name)
    except ConfigFileError as e:
        e.file, e.fingerprint = path.name, hashlib.sha256(data).hexdigest()
        raise


def _read_bounded(path: Path) -> bytes:
    """The file's bytes; a FIFO or device planted under a conf name never blocks the read, a
    huge file is refused rather than loaded."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ConfigFileError("not a regular file")
        chunks: list[bytes] = []
        size = 0
        while size <= MAX_CONF_BYTES:
            chunk = os.read(fd, 65536)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
            size += len(chunk)
        raise ConfigFileError(f"larger than {MAX_CONF_BYTES} bytes")
    finally:
        os.close(fd)


def candidate_names(net_dir: Path) -> list[str]:
    """``*.conf`` and ``*.conflist`` regular files in lexical order, as kubelet/libcni list them."""
    out = []
    for e in os.scandir(net_dir):
        if e.name.endswith(CONF_EXTS) and not e.name.startswith(".") and e.is_file():
            out.append(e.name)
    return sorted(out)


def find_primary(net_dir: Path, exclude: tuple = (), skipped: list | None = None) -> str | None:
    """The file kubelet would load first (skipping invalid ones and ``exclude``), else None.
    ``skipped`` receives the ``ConfigFileError`` of every invalid file passed over."""
    for name in candidate_names(net_dir):
        if name in exclude:
            continue
        try:
            read_conf(net_dir / name)
        except ConfigFileError as e:
            if skipped is not None:
                skipped.append(e)
            continue
        return name
    return None


def is_list(conf: dict) -> bool:
    return "plugins" in conf


def our_entries(conf: dict) -> list[int]:
    return [i for i, p in enumerate(conf.get("plugins", ())) if isinstance(p, dict) and p.get("type") == PLUGIN_TYPE]


# --- splicing -------------------------------------------------------------------------------


def wrap(conf: dict, style: str) -> dict:
    """A single-plugin ``.conf`` as a one-element list (the list keeps the version)."""
    inner = {k: v for k, v in conf.items() if k != "cniVersion"}
    if style == "seed":
        return {"plugins": [inner], "name": WRAP_NAME, "cniVersion": "0.3.0"}
    if style == "upstream":
        return {"cniVersion": "0.3.1", "name": WRAP_NAME, "plugins": [inner]}
    return {"cniVersion": conf.get("cniVersion", "0.3.1"), "name": conf.get("name") or WRAP_NAME, "plugins": [inner]}


def insert(existing: dict, entry: dict, style: str = "preserve") -> dict:
    """``existing`` (a .conf or a list) with our entry last, never twice; other keys untouched."""
    if not isinstance(existing, dict):
        raise ConfigFileError("existing config is not a JSON object")
    if not isinstance(entry, dict) or not isinstance(entry.get("type"), str):
        raise ConfigFileError("plugin entry is not a JSON object with a 'type'")
    if is_list(existing):
        if not isinstance(existing["plugins"], list):
            raise ConfigFileError("existing config's 'plugins' is not a list")
        out = dict(existing)
        plugins = [p for p in existing["plugins"] if not (isinstance(p, dict) and p.get("type") == PLUGIN_TYPE)]
    elif "type" in existing:
        out = wrap(existing, style)
        plugins = out["plugins"]
    else:
        raise ConfigFileError("existing config has neither 'plugins' nor 'type'")
    ours = {k: v for k, v in entry.items() if k != "cniVersion"}  # the list carries the version
    out["plugins"] = plugins + [ours]
    return out


def remove(existing: dict) -> dict:
    """``existing`` without our entries (a converted .conf stays a list, as upstream does)."""
    if not is_list(existing):
        return existing
    out = dict(existing)
    out["plugins"] = [p for p in existing["plugins"] if not (isinstance(p, dict) and p.get("type") == PLUGIN_TYPE)]
    return out


def entry_in_place(conf: dict, entry: dict) -> bool:
    """True when ``conf`` holds exactly one entry of ours, last, equal to ``entry``."""
    idx = our_entries(conf)
    if len(idx) != 1 or idx[0] != len(conf["plugins"]) - 1:
        return False
    want = {k: v for k, v in entry.items() if k != "cniVersion"}
    return conf["plugins"][-1] == want


def render(conf: dict, style: str = "preserve") -> bytes:
    text = json.dumps(conf, indent=2, ensure_ascii=False, sort_keys=(style == "upstream"))
    if style == "upstream":  # Go's encoding/json escapes these three
        text = text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return (text + "\n").encode()


def listed_name(name: str) -> str:
    """The file name a wrapped .conf is written under."""
    return name + "list" if name.endswith(".conf") else name


# --- our entry ------------------------------------------------------------------------------


def load_template(text: str, path: str = "") -> str:
    """The raw template (file wins over inline text), checked to be a JSON object once filled."""
    if path:
        try:
            text = Path(path).read_text()
        except OSError as e:
            raise ValueError(f"cannot read template {path}: {e.strerror}") from None
    if "__SERVICEACCOUNT_TOKEN__" in text:
        raise ValueError(
            "templates may not embed __SERVICEACCOUNT_TOKEN__: the token goes into "
            "the private kubeconfig only, never into the shared CNI config dir"
        )
    filled = fill_template(text, {})
    try:
        obj = json.loads(filled)
    except ValueError as e:
        raise ValueError(f"template is not JSON after substitution ({e})") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("type"), str):
        raise ValueError("template must be a JSON object with a string 'type'")
    return text


def fill_template(text: str, values: dict) -> str:
    for key in (
        "KUBECONFIG_FILEPATH",
        "KUBECONFIG_FILENAME",
        "KUBERNETES_SERVICE_HOST",
        "KUBERNETES_SERVICE_PORT",
        "KUBERNETES_NODE_NAME",
        "LOG_LEVEL",
        "CNI_NET_DIR",
        "CNI_AGENT_RUN_DIR",
        "CNI_BIN_DIR",
        "POD_NAMESPACE",
    ):
        text = text.replace(f"__{key}__", str(values.get(key, "0")))
    return text


def entry_for(s: Settings) -> dict:
    """The plugin netconf entry for ``Settings`` ``s`` (template when given, else generated)."""
    if s.cni_network_config or s.cni_network_config_file:
        text = load_template(s.cni_network_config, s.cni_network_config_file)
        return json.loads(
            fill_template(
                text,
                {
                    "KUBECONFIG_FILEPATH": s.kubeconfig_host_path,
                    "KUBECONFIG_FILENAME": s.kubecfg_file_name,
                    "KUBERNETES_SERVICE_HOST": s.k8s_service_host,
                    "KUBERNETES_SERVICE_PORT": s.k8s_service_port,
                    "KUBERNETES_NODE_NAME": s.node_name,
                    "LOG_LEVEL": s.effective_plugin_log_level,
                    "CNI_NET_DIR": s.cni_net_dir,
                    "CNI_AGENT_RUN_DIR": s.cni_agent_run_dir,
                    "CNI_BIN_DIR": s.cni_bin_dir,
                    "POD_NAMESPACE": s.pod_namespace,
                },
            )
        )
    level = s.effective_plugin_log_level
    entry = {
        "name": "istio-cni",
        "type": PLUGIN_TYPE,
        "log_level": level,
        "plugin_log_level": level,
        "cni_agent_run_dir": s.cni_agent_run_dir,
        "kubernetes": {
            "kubeconfig": s.kubeconfig_host_path,
            "cni_bin_dir": s.cni_bin_dir,
            "exclude_namespaces": list(s.exclude_namespaces),
        },
        "pod_namespace": s.pod_namespace,
        "native_nftables": s.native_nftables,
        "ambient_enabled": False,
        "netfilter_backend": s.netfilter_backend,
    }
    if s.lookup_deadline_seconds is not None:
        entry["lookup_deadline_seconds"] = s.lookup_deadline_seconds
    if s.lookup_retry_interval_seconds is not None:
        entry["lookup_retry_interval_seconds"] = s.lookup_retry_interval_seconds
    return entry
