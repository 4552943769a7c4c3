// Pins the version of istio-cni the test suite builds (tools/go-tools.sh); not part of the product.
module istio-cni-tools/istio-cni

go 1.26.0

require istio.io/istio v0.0.0-20260827124520-eed52ebb66ad
