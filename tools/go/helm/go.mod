// Pins the version of helm the test suite builds (tools/go-tools.sh); not part of the product.
module istio-cni-tools/helm

go 1.26.0

require helm.sh/helm/v3 v3.22.0
