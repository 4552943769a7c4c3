#!/bin/bash
# Build (or reuse from the cache) the Go programs the test suite talks to as real peers.
#
# Each tool has a tiny module in tools/go/<name>/ whose go.mod pins the upstream version (and,
# for kube-apiserver, the staging modules via replace directives). The binary goes to
#   $CACHE/<name>-<version>/<name>     symlinked as   $CACHE/bin/<name>
# and is reused while that version's binary exists. Every build writes $CACHE/<name>.build.log
# and $CACHE/<name>.status ("ok <version>" or "failed <step> <version>"); tests/peers/tools.py
# reads them so a test needing a tool that did not build FAILS naming the failed step.
# One failed tool never aborts `make setup`: the others are still built.
#
# Usage: tools/go-tools.sh [name ...]     (default: all, in the order teammates need them)
set -uo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
HOME=${HOME:-$(getent passwd "$(id -u)" | cut -d: -f6)}  # CI may run without HOME set
CACHE=${ISTIO_CNI_TOOLS_CACHE:-$HOME/.cache/istio-cni-tools}
# Module/build caches live beside the binaries so a second `make setup` downloads nothing.
export GOPATH="$CACHE/gopath" GOMODCACHE="$CACHE/gopath/pkg/mod" GOCACHE="$CACHE/gocache"
export GOFLAGS=-mod=mod GOTOOLCHAIN=local CGO_ENABLED=0

# name -> "module package"   (module is the one whose version go.mod pins)
declare -A SPEC=(
  [istio-iptables]="istio.io/istio istio-cni-tools/istio-iptables"
  [helm]="helm.sh/helm/v3 helm.sh/helm/v3/cmd/helm"
  [cnitool]="github.com/containernetworking/cni github.com/containernetworking/cni/cnitool"
  [kube-apiserver]="k8s.io/kubernetes k8s.io/kubernetes/cmd/kube-apiserver"
  [istio-cni]="istio.io/istio istio.io/istio/cni/cmd/istio-cni"
  [portmap]="github.com/containernetworking/plugins github.com/containernetworking/plugins/plugins/meta/portmap"
  # The node tier (tests/node): the rest of a node from the same k8s.io/kubernetes, and crictl.
  [crictl]="sigs.k8s.io/cri-tools sigs.k8s.io/cri-tools/cmd/crictl"
  [kube-scheduler]="k8s.io/kubernetes k8s.io/kubernetes/cmd/kube-scheduler"
  [kube-controller-manager]="k8s.io/kubernetes k8s.io/kubernetes/cmd/kube-controller-manager"
  [kubelet]="k8s.io/kubernetes k8s.io/kubernetes/cmd/kubelet"
  # The chart's docs (tests/chart/test_chart_docs.py): README.md and values.schema.json are
  # generated from the annotated values.yaml by these two.
  [helm-docs]="github.com/norwoodj/helm-docs github.com/norwoodj/helm-docs/cmd/helm-docs"
  [helm-values-schema-json]="github.com/losisin/helm-values-schema-json/v2 github.com/losisin/helm-values-schema-json/v2"
)
ORDER=(istio-iptables helm helm-docs helm-values-schema-json cnitool portmap kube-apiserver istio-cni crictl kube-scheduler kube-controller-manager kubelet)

export PATH="$PATH:/usr/local/go/bin"  # where the machine image keeps Go, if PATH lacks it
if ! command -v go >/dev/null; then
  echo "go-tools: 'go' not found on PATH; no Go tool can be built" >&2
  mkdir -p "$CACHE"
  for n in "${ORDER[@]}"; do echo "failed go-missing unknown" > "$CACHE/$n.status"; done
  exit 0
fi

# Version stamps upstream's own Makefiles put in with -X (helm: `helm version`, its default
# .Capabilities.KubeVersion; kube-apiserver: /version, which clients and charts' kubeVersion
# constraints read; kubelet: the node's kubeletVersion). Without them helm says "v3.22" and the
# apiserver "v0.0.0-master".
extra_ldflags() {  # name dir version
  local name=$1 dir=$2 ver=$3 kv major minor
  case $name in
    helm)
      kv=$(cd "$dir" && go list -m -f '{{.Version}}' k8s.io/client-go)   # v0.M.x -> Kubernetes 1.M
      minor=$(echo "$kv" | cut -d. -f2)
      echo "-X helm.sh/helm/v3/internal/version.version=$ver -X helm.sh/helm/v3/internal/version.gitTreeState=clean" \
           "-X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$minor" \
           "-X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=$minor" ;;
    kube-apiserver|kube-controller-manager|kube-scheduler|kubelet)
      major=$(echo "${ver#v}" | cut -d. -f1); minor=$(echo "$ver" | cut -d. -f2)
      for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
        echo "-X $p.gitVersion=$ver -X $p.gitMajor=$major -X $p.gitMinor=$minor -X $p.gitTreeState=clean"
      done ;;
  esac
}

pinned_version() {  # dir module -> version from the require line of go.mod
  awk -v m="$2" '($1 == m || ($1 == "require" && $2 == m)) { print ($1 == m ? $2 : $3); exit }' "$1/go.mod"
}

build_one() {
  local name=$1 module pkg dir ver out log status t0 flags
  read -r module pkg <<< "${SPEC[$name]}"
  dir="$ROOT/tools/go/$name"
  log="$CACHE/$name.build.log"; status="$CACHE/$name.status"
  ver=$(pinned_version "$dir" "$module")
  if [ -z "$ver" ]; then
    echo "failed read-version unknown" > "$status"
    echo "go-tools: $name: no version of $module in $dir/go.mod" | tee "$log" >&2
    return 1
  fi
  out="$CACHE/$name-$ver/$name"
  # The cached binary counts only if it was built with today's flags (a flag change rebuilds).
  flags="-trimpath -ldflags=-s -w $(extra_ldflags "$name" "$dir" "$ver" | tr '\n' ' ')"
  if [ -x "$out" ] && [ "$(cat "$out.flags" 2>/dev/null)" = "$flags" ]; then
    ln -sfn "$out" "$CACHE/bin/$name"
    echo "ok $ver" > "$status"
    echo "go-tools: $name $ver: cached"
    return 0
  fi
  t0=$SECONDS
  echo "go-tools: $name $ver: building (log: $log)"
  {
    echo "# $(date -u +%FT%TZ) building $pkg @ $module $ver with $(go version)"
    echo "# step: download"
  } > "$log"
  if ! (cd "$dir" && go mod download -x "$module") >> "$log" 2>&1; then
    echo "failed download $ver" > "$status"
    echo "go-tools: $name: FAILED at step download (see $log)" >&2
    return 1
  fi
  echo "# step: build" >> "$log"
  mkdir -p "$CACHE/$name-$ver"
  # Build to a temporary name, then rename: a half-written binary is never taken as cached.
  echo "# flags: $flags" >> "$log"
  if ! (cd "$dir" && go build -trimpath -ldflags="-s -w $(extra_ldflags "$name" "$dir" "$ver")" \
        -o "$out.tmp" "$pkg") >> "$log" 2>&1; then
    rm -f "$out.tmp"
    echo "failed build $ver" > "$status"
    echo "go-tools: $name: FAILED at step build (see $log)" >&2
    return 1
  fi
  mv -f "$out.tmp" "$out"
  echo "$flags" > "$out.flags"
  ln -sfn "$out" "$CACHE/bin/$name"
  echo "# built in $((SECONDS - t0))s" >> "$log"
  echo "ok $ver" > "$status"
  echo "go-tools: $name $ver: built in $((SECONDS - t0))s"
}

mkdir -p "$CACHE/bin"
# Two setups at once (two shells, make -j) would race on the same output files: take turns.
exec 9>"$CACHE/.lock"
flock -w 3600 9 || { echo "go-tools: another go-tools.sh holds $CACHE/.lock for an hour; giving up" >&2; exit 0; }
names=("$@"); [ ${#names[@]} -eq 0 ] && names=("${ORDER[@]}")
failed=()
for n in "${names[@]}"; do
  if [ -z "${SPEC[$n]:-}" ]; then echo "go-tools: unknown tool '$n' (known: ${ORDER[*]})" >&2; exit 2; fi
  build_one "$n" || failed+=("$n")
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "go-tools: NOT built: ${failed[*]} (tests needing them will fail naming the step; see $CACHE/<name>.build.log)" >&2
fi
exit 0
