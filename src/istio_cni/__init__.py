"""istio-cni: the Istio CNI plugin (sidecar traffic redirection) in Python.

No import-time side effects: the plugin's per-exec import graph is kept minimal.
"""

__version__ = "0.1.0"

# Set by the plugin's entry point (``__main__``): this process is a one-shot plugin exec, so
# ``transport`` may install its lean IDNA shortcut process-wide. Long-lived processes leave it
# off. Here rather than in ``transport`` so that setting it imports nothing (the agent path
# never loads ``transport``).
ONE_SHOT_PROCESS = False

# Set by the entry point (``__main__``) when the compiled front handed this ADD over after its
# own exchange with the node agent: the fd of its record, replayed by ``agent_client``.
FRONT_EXCHANGE_FD: int | None = None

# Set by the entry point when the compiled front started this ADD's pod GET itself
# (src/front/prefetch.h): its record and done fds, taken once by ``k8s.Client``; and the pid
# of the front's child that makes it, which the entry point ends and reaps at exit.
FRONT_PREFETCH: tuple[int, int] | None = None
FRONT_PREFETCH_PID = 0


# The ADD path does not import ``os``: in a fresh interpreter ``import os`` costs ~1.5 ms (it
# loads ``_collections_abc``, ``stat``, ``posixpath`` and ``genericpath``; the interpreter's own
# start loads none of them), 5 % of a whole direct-path ADD. ``os`` is a thin layer over the
# builtin ``posix`` module, which is loaded already; these two read the environment the way
# ``os.environ`` decodes it (``benchmarks/RESULTS.md``, "An ADD path without os").
def environ() -> dict[str, str]:
    """The process environment, decoded as ``os.environ`` decodes it."""
    import posix
    import sys

    enc = sys.getfilesystemencoding()
    return {k.decode(enc, "surrogateescape"): v.decode(enc, "surrogateescape") for k, v in posix.environ.items()}


def getenv(name: str) -> str | None:
    """``os.environ.get(name)`` without ``os``."""
    import posix
    import sys

    enc = sys.getfilesystemencoding()
    value = posix.environ.get(name.encode(enc, "surrogateescape"))
    return None if value is None else value.decode(enc, "surrogateescape")
