"""istio-cni: the Istio CNI plugin (sidecar traffic redirection) in Python.

No import-time side effects: the plugin's per-exec import graph is kept minimal.
"""

__version__ = "0.1.0"
