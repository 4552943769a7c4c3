#!/bin/bash
# Install the Debian packages the build and the tests need (only the missing ones).
set -euo pipefail
PKGS=(
  build-essential pkg-config
  iptables libiptc-dev libip4tc-dev libip6tc-dev libxtables-dev   # libiptc (legacy x_tables)
  nftables libnftables-dev                                       # libnftables
  containernetworking-plugins                                    # reference plugins in /usr/lib/cni
  iproute2 util-linux conntrack hyperfine etcd-server procps
  time                                                           # /usr/bin/time: plugin peak RSS (benchmarks)
  python3                                                        # /usr/bin/python3: traffic helpers run as uid 1337 (tests/integration/traffic.py)
  openssl                                                        # test PKI (tests/peers/certs.py)
  containerd runc                                                # the node tier's container runtime (tests/node)
  buildah debootstrap                                            # node tier images without a registry (tools/images/build.py)
)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "apt: all ${#PKGS[@]} packages present"
  exit 0
fi
echo "apt: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
