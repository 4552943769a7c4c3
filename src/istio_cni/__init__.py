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
