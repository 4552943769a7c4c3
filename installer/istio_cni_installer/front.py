"""The compiled front (``src/front/``): what kubelet execs as ``<bin>/istio-cni``.

The build compiles one front per architecture (``setup.py``); the bundle carries it unconfigured
at ``bin/istio-cni-front``. The installer writes the paths of the bundle as the host sees them
into a fixed-size block of its copy (``configure``): no recompilation, the same file size, and
nothing for the front to read at run time. The block is the marker followed by NUL-terminated
``key=value`` entries and an empty entry, zero padded; ``src/front/front.c`` reads it.

Keys: ``python`` (the interpreter, exec'd by this path), ``lib`` (``LD_LIBRARY_PATH``),
``code`` (the ``-c`` program that puts the bundle's site-packages first and runs the plugin);
with ``versions`` (the CNI versions the plugin supports, comma-separated) and
``agent_socket_name`` (the agent's socket in ``cni_agent_run_dir``) the front also serves an
ordinary ADD through the node agent itself (``src/front/agent.h``); without them it only execs.
"""

from __future__ import annotations

CONFIG_SIZE = 4096  # FRONT_CONFIG_SIZE in src/front/front.c
MARKER = b"\n#istio-cni-front-config-v1#\n"  # FRONT_MARKER in src/front/front.c
KEYS = ("python", "lib", "code")
AGENT_KEYS = ("versions", "agent_socket_name")  # optional, together: the front's agent path


class FrontError(ValueError):
    """The front executable or its configuration cannot be used (the message says why)."""


def _block_offset(front: bytes) -> int:
    at = front.find(MARKER)
    if at < 0 or front.find(MARKER, at + 1) >= 0:
        raise FrontError("the front executable has no unique configuration block")
    if at + CONFIG_SIZE > len(front):
        raise FrontError("the front executable's configuration block is truncated")
    return at


def configure(front: bytes, config: dict[str, str]) -> bytes:
    """``front`` with ``config`` written into its block (every key of ``KEYS``, optionally all of
    ``AGENT_KEYS``; no NUL bytes)."""
    if sorted(config) not in (sorted(KEYS), sorted(KEYS + AGENT_KEYS)):
        raise FrontError(
            f"front configuration needs exactly {', '.join(KEYS)} (and optionally {', '.join(AGENT_KEYS)})"
        )
    block = bytearray(MARKER)
    for key in [k for k in KEYS + AGENT_KEYS if k in config]:
        value = config[key].encode()
        if not value or b"\0" in value:
            raise FrontError(f"front configuration {key!r} is empty or holds a NUL byte")
        block += key.encode() + b"=" + value + b"\0"
    block += b"\0"
    if len(block) > CONFIG_SIZE:
        raise FrontError(f"front configuration is {len(block)} bytes; the block holds {CONFIG_SIZE}")
    at = _block_offset(front)
    return front[:at] + bytes(block).ljust(CONFIG_SIZE, b"\0") + front[at + CONFIG_SIZE :]


def read_config(front: bytes) -> dict[str, str]:
    """The configuration written into ``front`` (empty for the build's unconfigured copy)."""
    at = _block_offset(front)
    block = front[at + len(MARKER) : at + CONFIG_SIZE]
    out = {}
    for entry in block.split(b"\0"):
        if not entry:
            break
        key, _, value = entry.partition(b"=")
        out[key.decode()] = value.decode()
    return out
