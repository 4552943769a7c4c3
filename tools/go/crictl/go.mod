// Pins the crictl of the node test tier (tests/node: inspects and execs into pod sandboxes through
// the node's containerd CRI socket); tools/go-tools.sh builds sigs.k8s.io/cri-tools/cmd/crictl.
// Debian 12 has no cri-tools package.
module istio-cni-tools/crictl

go 1.26.6

require sigs.k8s.io/cri-tools v1.37.0
