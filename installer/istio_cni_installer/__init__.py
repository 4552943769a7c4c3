"""The node program: installs the istio-cni plugin on the host and keeps it installed."""
