// Pins the version of cnitool the test suite builds (tools/go-tools.sh); not part of the product.
module istio-cni-tools/cnitool

go 1.26.0

require github.com/containernetworking/cni v1.3.1
