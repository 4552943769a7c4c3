// Pins the portmap CNI plugin the cnitool e2e test chains (tools/go-tools.sh); not part of the
// product. Debian 12's containernetworking-plugins 1.1.1 portmap fails every CHECK that has port
// mappings (it looks for its IPv4 DNAT rule in the ip6tables nat table; upstream
// containernetworking/plugins#819, fixed in later releases), so the test chain takes a fixed one.
module istio-cni-tools/portmap

go 1.26.8

require github.com/containernetworking/plugins v1.10.0
