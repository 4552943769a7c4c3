"""The CNI protocol in one place (after containernetworking's ``pkg/skel``).

Reads the environment and stdin exactly once, validates them per command, negotiates
the spec version, dispatches to the plugin's command functions and turns every outcome
into stdout JSON and an exit code. Nothing else in the package writes to stdout.

Per-command required variables follow libcni's skel table; every missing variable is
named in one error (code 4). ``CNI_NETNS`` must be a network namespace for ADD and
CHECK (code 8); DEL tolerates a vanished one, as the spec requires.

Whatever bytes arrive, stdout carries exactly one JSON document (pure ASCII, so valid
UTF-8) and the exit status is non-zero on error: an environment value that is not UTF-8
is code 4 naming the variable, stdin is read up to ``MAX_STDIN_BYTES`` (more is code 6),
undecodable JSON is code 6, and an exception nobody expected becomes code 999 carrying
only types, frames and safe messages (``errors.internal_error``), never reprs or values.
"""

from __future__ import annotations

import sys

from . import environ, errors
from .log import log
from .versions import LATEST, SUPPORTED_VERSIONS, vtuple

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (the ADD path's budget)
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from typing import IO, TextIO

ABOUT = "istio-cni plugin (Python) CNI protocol versions " + ", ".join(SUPPORTED_VERSIONS)

_COMMANDS = ("ADD", "DEL", "CHECK", "VERSION", "STATUS", "GC")
# The CNI variables we read; each must be valid UTF-8 (os.environ holds undecodable bytes
# as lone surrogate escapes, which no path, name or JSON document can carry).
_CNI_VARS = ("CNI_COMMAND", "CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_ARGS", "CNI_PATH")
# A netconf with its prevResult is a few KiB; a bounded read keeps a runaway writer from
# growing the plugin's memory without limit.
MAX_STDIN_BYTES = 4 << 20
# var -> commands that require it (libcni skel's reqForCmd table).
_REQUIRED = {
    "CNI_CONTAINERID": ("ADD", "CHECK", "DEL"),
    "CNI_NETNS": ("ADD", "CHECK"),
    "CNI_IFNAME": ("ADD", "CHECK", "DEL"),
    "CNI_PATH": ("ADD", "CHECK", "DEL", "GC", "STATUS"),
}
# Commands and the spec version that introduced them.
_MIN_VERSION = {"CHECK": (0, 4, 0), "STATUS": (1, 1, 0), "GC": (1, 1, 0)}


class CmdArgs:
    """The CNI invocation: env values plus the decoded netconf and its raw bytes."""

    __slots__ = ("command", "container_id", "netns", "ifname", "args", "path", "netconf", "stdin")

    def __init__(
        self,
        command: str,
        container_id: str,
        netns: str,
        ifname: str,
        args: str,
        path: str,
        netconf: dict,
        stdin: bytes,
    ) -> None:
        self.command = command
        self.container_id = container_id
        self.netns = netns
        self.ifname = ifname
        self.args = args
        self.path = path
        self.netconf = netconf
        self.stdin = stdin


def _loads(data: bytes) -> object:
    from ._fastpath import json_loads

    return json_loads(data)


def dumps(obj: object) -> str:
    from ._fastpath import json_dumps

    return json_dumps(obj)


def _shorten(text: str, limit: int = 64) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def check_encoding(env: Mapping[str, str]) -> None:
    """Every CNI variable must be valid UTF-8 (code 4 naming them; the values are not echoed)."""
    bad = []
    for name in _CNI_VARS:
        value = env.get(name)
        if value and not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                bad.append(name)
    if bad:
        raise errors.InvalidEnvironmentVariables(f"env variables [{','.join(bad)}] are not valid UTF-8", "")


def read_stdin(stdin: IO[bytes] | IO[str] | None) -> bytes:
    """At most ``MAX_STDIN_BYTES`` of stdin (code 6 beyond that, code 5 if it cannot be read)."""
    if stdin is None:  # fd 0 closed: nothing to read
        return b""
    try:
        data = stdin.read(MAX_STDIN_BYTES + 1)
    except OSError as e:
        raise errors.IOFailure("cannot read the network configuration from stdin", e.strerror or "") from None
    if data is None:  # non-blocking stdin with nothing ready
        return b""
    if isinstance(data, str):  # a text stream in tests
        data = data.encode("utf-8", "surrogateescape")
    if len(data) > MAX_STDIN_BYTES:
        raise errors.DecodingFailure(
            f"network configuration larger than {MAX_STDIN_BYTES} bytes", "stdin not read further"
        )
    return data


def check_env(command: str, env: Mapping[str, str]) -> None:
    missing = [v for v, cmds in _REQUIRED.items() if command in cmds and not env.get(v)]
    if missing:
        raise errors.InvalidEnvironmentVariables(f"required env variables [{','.join(missing)}] missing", "")


def check_netns(path: str) -> None:
    """``path`` must be a network namespace and not our own (code 8)."""
    from ._fastpath import close_fd, current_netns, netns_id, open_netns

    try:
        fd = open_netns(path)
    except errors.NotANetns as e:
        raise errors.InvalidNetNS(f"{path} is not a network namespace", str(e)) from None
    except OSError as e:
        raise errors.InvalidNetNS(f"failed to open netns {path}", e.strerror or str(e)) from None
    try:
        own = current_netns()
        try:
            if netns_id(fd) == netns_id(own):
                raise errors.InvalidNetNS(f"netns {path} is the plugin's own network namespace")
        finally:
            close_fd(own)
    finally:
        close_fd(fd)


def decode_netconf(data: bytes) -> dict:
    try:
        conf = _loads(data)
    except ValueError as e:
        raise errors.DecodingFailure("failed to decode network configuration", str(e)) from None
    if not isinstance(conf, dict):
        raise errors.DecodingFailure("network configuration is not a JSON object")
    return conf


def conf_version(conf: dict) -> str:
    """The netconf's ``cniVersion`` (empty means 0.1.0, as libcni decodes it); code 1 if unknown."""
    v = conf.get("cniVersion") or "0.1.0"
    if not isinstance(v, str):
        raise errors.InvalidNetworkConfig("cniVersion must be a string", repr(v))
    if v not in SUPPORTED_VERSIONS:
        raise errors.IncompatibleCNIVersion(
            f'incompatible CNI versions; config is "{_shorten(v)}", plugin supports {list(SUPPORTED_VERSIONS)}'
        )
    return v


def _write(stream: TextIO | None, obj: object) -> bool:
    """Print ``obj`` as the one stdout document; False if stdout is gone (closed, EPIPE)."""
    text = dumps(obj) + "\n"
    if stream is None:
        return False
    try:
        stream.write(text)
        stream.flush()
    except (OSError, ValueError):
        return False
    return True


def plugin_main(
    funcs: Mapping[str, Callable[[CmdArgs], dict | None]],
    env: Mapping[str, str] | None = None,
    stdin: IO[bytes] | IO[str] | None = None,
    stdout: TextIO | None = None,
) -> int:
    """Run one CNI command. ``funcs`` maps ADD/DEL/CHECK/STATUS/GC to callables
    ``f(CmdArgs) -> dict | None``. Returns the process exit code."""
    env = environ() if env is None else env
    stdout = sys.stdout if stdout is None else stdout
    command = env.get("CNI_COMMAND", "")
    version = LATEST
    try:
        check_encoding(env)
        if not command:
            if sys.stderr is not None:
                sys.stderr.write(ABOUT + "\n")
            return 0
        if command not in _COMMANDS:
            raise errors.InvalidEnvironmentVariables(f"unknown CNI_COMMAND: {_shorten(command)}")
        check_env(command, env)
        if stdin is None:
            stdin = getattr(sys.stdin, "buffer", None)
        raw = read_stdin(stdin)
        if command == "VERSION":
            ok = _write(stdout, {"cniVersion": LATEST, "supportedVersions": list(SUPPORTED_VERSIONS)})
            return 0 if ok else 1
        conf = decode_netconf(raw)
        version = conf_version(conf)
        need = _MIN_VERSION.get(command)
        if need and vtuple(version) < need:
            raise errors.IncompatibleCNIVersion(f'config version "{version}" does not allow command {command}')
        if command in ("ADD", "CHECK"):
            check_netns(env["CNI_NETNS"])
        args = CmdArgs(
            command,
            env.get("CNI_CONTAINERID", ""),
            env.get("CNI_NETNS", ""),
            env.get("CNI_IFNAME", ""),
            env.get("CNI_ARGS", ""),
            env.get("CNI_PATH", ""),
            conf,
            raw,
        )
        result = funcs[command](args)
        if result is not None:
            return 0 if _write(stdout, result) else 1
        return 0
    except errors.CNIError as e:
        log.error(e.msg, code=e.code, details=e.details, command=command)
        _write(stdout, e.to_dict(version))
        return 1
    except BaseException as e:  # incl. NetnsRestoreFailed: report, then exit; never continue
        if isinstance(e, SystemExit):
            raise
        internal = errors.internal_error(e)
        log.error("internal error", error=internal.msg, command=command)
        try:
            out = internal.to_dict(version)
            _write(stdout, out)
        except Exception:  # the result itself could not be encoded: a fixed, plain document
            _write(stdout, errors.InternalError(f"internal error: {type(e).__name__}").to_dict(LATEST))
        return 1
