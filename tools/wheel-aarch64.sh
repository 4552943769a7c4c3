#!/bin/bash
# The aarch64 half of `make wheel`, on an x86_64 Debian 12 machine with no container engine
# and without touching machine-wide settings (no binfmt_misc handler, no dpkg foreign
# architecture, no arm64 package installed). Route: ../shared/research/aarch64-wheels.md.
#   1. an arm64 sysroot from bookworm's arm64 .debs (debootstrap --download-only, dpkg-deb
#      extraction; nothing is configured or run);
#   2. cross-compile with Debian's gcc-aarch64-linux-gnu through a crossenv environment;
#   3. auditwheel repair with the x86_64 wheel's exclusions (GPL libraries stay with the system);
#   4. run the wheel under qemu-user (Debian's qemu-user-static .deb, unpacked, never
#      installed): check_compiled.py, the compiled-vs-Python encoder parity, the unit tier.
# Sysroot, qemu, crossenv and the aarch64 test dependencies are cached under
# $CACHE (~/.cache/istio-cni-tools/aarch64), each keyed by what determines its content.
#
# Usage: tools/wheel-aarch64.sh [WORK]   (WORK from wheel-check.sh: WORK/src is the tree copy,
# WORK/tools the tools venv; without it, both are made here). Output: the wheel in $WHEEL_OUT.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
. "$ROOT/tools/wheel-lib.sh"
OUT=${WHEEL_OUT:-$ROOT/dist}
CACHE=${ISTIO_CNI_AARCH64_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/istio-cni-tools/aarch64}
SUITE=bookworm
PYVER=3.11                  # bookworm's CPython; the build interpreter must be the same version
BUILD_PY=/usr/bin/python$PYVER
CROSSENV_REQ="crossenv==1.6.2"
BUILD_REQS=("setuptools>=77" "wheel" "Cython>=3.0" "cffi>=1.16")
SYSROOT_PKGS="libpython$PYVER-dev,python$PYVER,libiptc-dev,libnftables-dev,linux-libc-dev,libc6-dev"
# auditwheel's tag for a Debian 12 sysroot is manylinux_2_34; pip needs each tag spelt out.
PLATFORMS=(manylinux_2_34_aarch64 manylinux_2_28_aarch64 manylinux_2_17_aarch64 manylinux2014_aarch64)

[ "$(id -u)" = 0 ] || fail "aarch64: needs root (apt-get, debootstrap)"
[ "$(uname -m)" = x86_64 ] || fail "aarch64: this route cross-builds from x86_64"

if [ $# -ge 1 ]; then
  WORK=$1
else
  WORK=$(mktemp -d /tmp/istio-cni-wheel-aarch64.XXXXXX)
  trap 'rm -rf "$WORK"' EXIT
fi
A="$WORK/aarch64"
mkdir -p "$A" "$CACHE"
exec 9>"$CACHE/.lock"
timeout 1800 flock 9 || fail "aarch64: another make wheel holds $CACHE/.lock"

T0=$SECONDS
step "aarch64: host packages (only the missing ones are installed)"
ensure_apt debootstrap gcc-aarch64-linux-gnu "python$PYVER" "python$PYVER-venv" python3-venv \
  debian-archive-keyring curl ca-certificates
if [ ! -x "$WORK/tools/bin/auditwheel" ]; then
  tools_venv "$WORK/tools" "$BUILD_PY"
fi
if [ ! -d "$WORK/src" ]; then
  copy_tree "$ROOT" "$WORK/src"
  [ -d "$ROOT/../shared" ] && ln -s "$(cd "$ROOT/.." && pwd)/shared" "$WORK/shared"
fi
TREE="$WORK/src"  # tests run from the copy the wheel was built from
export PATH="$WORK/tools/bin:$PATH"

hash_of() { sha256sum | cut -c1-16; }

# ---- 1. sysroot -------------------------------------------------------------------------
# The sysroot is a function of bookworm's arm64 package index (which fixes every version
# debootstrap resolves), the package list and the extraction recipe: key = the SHA256 that
# the suite's InRelease lists for main/binary-arm64/Packages, plus the list.
MIRROR=$(awk '/^URIs:/ && $2 ~ /\/debian\/?$/ {print $2; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
MIRROR=${MIRROR:-http://deb.debian.org/debian}
index_sha=
if inrelease=$(timeout 60 curl -fsSL "$MIRROR/dists/$SUITE/InRelease"); then
  index_sha=$(awk '/^SHA256:/ {s=1; next} /^[A-Za-z]/ {s=0}
                   s && $3 == "main/binary-arm64/Packages" && !done {print $1; done=1}' <<< "$inrelease")
fi
if [ -n "$index_sha" ]; then
  SYSROOT_KEY=$(printf '%s\n' "$SUITE" "$index_sha" "$SYSROOT_PKGS" "recipe-1" | hash_of)
else
  # Offline: the newest sysroot already built is still exactly what it was when built.
  SYSROOT_KEY=$(ls -t "$CACHE" | sed -n 's/^sysroot-\([0-9a-f]*\)$/\1/p' | head -1)
  [ -n "$SYSROOT_KEY" ] || fail "aarch64: cannot read $MIRROR/dists/$SUITE/InRelease and nothing is cached"
  step "aarch64: mirror unreachable, using the cached sysroot $SYSROOT_KEY"
fi
SYSROOT="$CACHE/sysroot-$SYSROOT_KEY"
if [ -f "$SYSROOT/.complete" ]; then
  step "aarch64: sysroot cached ($SYSROOT, $(wc -l < "$SYSROOT/.debs") packages)"
else
  step "aarch64: sysroot: downloading arm64 .debs of $SUITE ($MIRROR)"
  rm -rf "$SYSROOT" "$SYSROOT.debs"
  timeout 900 debootstrap --arch=arm64 --variant=minbase --download-only \
    --include="$SYSROOT_PKGS" "$SUITE" "$SYSROOT.debs" "$MIRROR" > "$A/debootstrap.log" 2>&1 \
    || { tail -30 "$A/debootstrap.log" >&2; fail "aarch64: debootstrap --download-only"; }
  step "aarch64: sysroot: extracting $(ls "$SYSROOT.debs"/var/cache/apt/archives/*.deb | wc -l) packages"
  mkdir -p "$SYSROOT/usr/bin" "$SYSROOT/usr/sbin" "$SYSROOT/usr/lib"
  ln -s usr/bin "$SYSROOT/bin"; ln -s usr/sbin "$SYSROOT/sbin"; ln -s usr/lib "$SYSROOT/lib"
  for deb in "$SYSROOT.debs"/var/cache/apt/archives/*.deb; do
    dpkg-deb --fsys-tarfile "$deb" | tar -x --keep-directory-symlink -C "$SYSROOT"
    basename "$deb" >> "$SYSROOT/.debs"
  done
  # qemu -L falls back to the host's path when the sysroot lacks one: empty site dirs keep
  # the host's x86_64 Python packages out of the arm64 interpreter.
  mkdir -p "$SYSROOT/usr/lib/python3/dist-packages" "$SYSROOT/usr/local/lib/python$PYVER/dist-packages"
  rm -rf "$SYSROOT.debs"
  touch "$SYSROOT/.complete"
fi
grep -E '^(libc6|libpython3.11|libiptc0|libip4tc2|libnftables1|linux-libc-dev)_' "$SYSROOT/.debs" \
  | sed 's/^/wheel-check: aarch64:   /'

# ---- 2. qemu-user (unpacked, not installed: its postinst would register binfmt handlers) --
QEMU_VER=$(apt-cache policy qemu-user-static | awk '/Candidate:/ {print $2}')
[ -n "$QEMU_VER" ] && [ "$QEMU_VER" != "(none)" ] || fail "aarch64: apt knows no qemu-user-static"
QDIR="$CACHE/qemu-$(echo "$QEMU_VER" | tr ':+~' '___')"
QEMU="$QDIR/usr/bin/qemu-aarch64-static"
if [ ! -x "$QEMU" ]; then
  step "aarch64: qemu-user-static $QEMU_VER (apt-get download + dpkg-deb -x)"
  rm -rf "$QDIR" && mkdir -p "$A/qemu-deb"
  (cd "$A/qemu-deb" && timeout 600 apt-get download -q -o APT::Sandbox::User=root "qemu-user-static=$QEMU_VER" >/dev/null)
  rm -rf "$QDIR.tmp" && dpkg-deb -x "$A"/qemu-deb/qemu-user-static_*.deb "$A/qemu-x"
  # keep the one emulator we run (and its licence), not all 370 MB of targets
  mkdir -p "$QDIR.tmp/usr/bin" "$QDIR.tmp/usr/share/doc"
  mv "$A/qemu-x/usr/bin/qemu-aarch64-static" "$QDIR.tmp/usr/bin/"
  mv "$A/qemu-x/usr/share/doc/qemu-user-static" "$QDIR.tmp/usr/share/doc/"
  mv "$QDIR.tmp" "$QDIR"
fi
step "aarch64: $("$QEMU" --version | head -1)"

# ---- 3. crossenv -------------------------------------------------------------------------
XKEY=$(printf '%s\n' "$SYSROOT_KEY" "$CROSSENV_REQ" "${BUILD_REQS[@]}" "$("$BUILD_PY" -VV)" | hash_of)
XDIR="$CACHE/crossenv-$XKEY"
if [ ! -f "$XDIR/.complete" ]; then
  step "aarch64: crossenv ($CROSSENV_REQ, build interpreter $("$BUILD_PY" -V))"
  rm -rf "$XDIR"
  timeout 300 "$BUILD_PY" -m venv "$XDIR/host"
  timeout 600 "$XDIR/host/bin/pip" install -q --disable-pip-version-check "$CROSSENV_REQ"
  timeout 300 "$XDIR/host/bin/python" -m crossenv --sysroot "$SYSROOT" \
    --sysconfigdata-file "$SYSROOT/usr/lib/python$PYVER/_sysconfigdata__linux_aarch64-linux-gnu.py" \
    "$SYSROOT/usr/bin/python$PYVER" "$XDIR/xenv" > "$A/crossenv.log" 2>&1 \
    || { cat "$A/crossenv.log" >&2; fail "aarch64: crossenv"; }
  timeout 600 "$XDIR/xenv/bin/build-pip" install -q --disable-pip-version-check "${BUILD_REQS[@]}"
  touch "$XDIR/.complete"
else
  step "aarch64: crossenv cached ($XDIR)"
fi

# ---- 4. aarch64 test dependencies (wheels from PyPI for the arm64 interpreter) ---------------
pip_a64() {
  local p args=()
  for p in "${PLATFORMS[@]}"; do args+=(--platform "$p"); done
  timeout 600 "$WORK/tools/bin/pip" install -q --disable-pip-version-check --only-binary=:all: \
    --python-version "$PYVER" --implementation cp --abi "cp${PYVER/./}" "${args[@]}" "$@"
}
DKEY=$(printf '%s\n' "${TEST_REQS[@]}" "${PLATFORMS[@]}" "$PYVER" | hash_of)
DEPS="$CACHE/testdeps-$DKEY/site-packages"
if [ ! -f "$DEPS/.complete" ]; then
  step "aarch64: test dependencies (${TEST_REQS[*]}, cffi)"
  rm -rf "$(dirname "$DEPS")"
  pip_a64 --target "$DEPS" "${TEST_REQS[@]}" "cffi>=1.16"
  touch "$DEPS/.complete"
fi

T1=$SECONDS
# ---- 5. build and repair -----------------------------------------------------------------
step "aarch64: sysroot, qemu, crossenv, test dependencies ready in $((T1 - T0)) s"
step "aarch64: cross-building the wheel"
rm -rf "$A/src" && cp -a "$WORK/src" "$A/src"
(cd "$A/src" && CC="aarch64-linux-gnu-gcc --sysroot=$SYSROOT" \
   timeout 900 "$XDIR/xenv/bin/cross-python" -m pip wheel -q --disable-pip-version-check \
   --no-build-isolation --no-deps -w "$A/raw" . > "$A/build.log" 2>&1) \
  || { tail -40 "$A/build.log" >&2; fail "aarch64: cross build"; }
RAW=$(ls "$A"/raw/*.whl)
step "aarch64: built $(basename "$RAW")"
export LD_LIBRARY_PATH="$SYSROOT/usr/lib/aarch64-linux-gnu"  # where auditwheel finds arm64 libs
timeout 120 auditwheel show "$RAW"
WHEEL=$(repair_wheel "$RAW" "$A/repaired" "$A/repair.log")
unset LD_LIBRARY_PATH
NAME=$(basename "$WHEEL")
case "$NAME" in *manylinux*_aarch64.whl) ;; *) fail "aarch64: repaired wheel $NAME has no manylinux aarch64 tag" ;; esac
step "aarch64: repaired: $NAME"
check_contents "$WORK/tools/bin/python" "$WHEEL" aarch64

T2=$SECONDS
step "aarch64: built, repaired and checked in $((T2 - T1)) s"
# ---- 6. test under qemu-user -------------------------------------------------------------
step "aarch64: installing the wheel into a venv of the arm64 interpreter"
# A venv layout (pyvenv.cfg + lib/python3.X/site-packages), so the wheel is found the way a
# real venv finds it, also by children run with -I (which ignores PYTHONPATH).
SITE="$A/env/lib/python$PYVER/site-packages"
pip_a64 --no-deps --target "$SITE" "$WHEEL"
echo "$DEPS" > "$SITE/istio-cni-testdeps.pth"  # the cached test requirements
printf 'home = /usr/bin\ninclude-system-site-packages = false\nversion = %s\n' "$PYVER" > "$A/env/pyvenv.cfg"
mkdir -p "$A/env/bin"
# -0 "$0": argv[0] (so sys.executable) is this script, so tests that spawn sys.executable go
# back through qemu, and the interpreter finds pyvenv.cfg next to it. -L: the arm64 loader,
# libraries and stdlib come from the sysroot (home = /usr/bin is read through it).
cat > "$A/env/bin/python" <<EOF
#!/bin/sh
export ISTIO_CNI_TEST_EMULATOR="qemu-aarch64 $QEMU_VER"
exec "$QEMU" -L "$SYSROOT" -0 "\$0" "$SYSROOT/usr/bin/python$PYVER" "\$@"
EOF
chmod +x "$A/env/bin/python"
PY="$A/env/bin/python"
"$PY" -c 'import platform, sys; print("wheel-check: aarch64: interpreter", platform.machine(), sys.version.split()[0], "prefix", sys.prefix)'
[ "$("$PY" -I -c 'import istio_cni, sys; print(istio_cni.__file__.startswith(sys.prefix))')" = True ] \
  || fail "aarch64: the venv layout does not make the wheel importable"
[ "$("$PY" -c 'import platform; print(platform.machine())')" = aarch64 ] || fail "aarch64: not emulated"

# Run from outside the tree, so only the installed package can be imported.
(cd "$A" && timeout 600 "$PY" "$TREE/tests/wheel/check_compiled.py") || fail "aarch64: compiled modules"
pytest_a64() {  # JUNIT ARGS...: pytest under qemu, summarised from its JUnit XML
  local junit=$1; shift
  (cd "$A" && timeout 3600 "$PY" -m pytest -q -p no:cacheprovider -rs --junitxml="$junit" \
     --rootdir "$TREE" -c "$TREE/pyproject.toml" "$@")
}
step "aarch64: compiled rule encoder vs Python encoder (every golden rule), under qemu"
pytest_a64 "$A/parity.xml" "$TREE/tests/unit/test_xtenc_parity.py" || fail "aarch64: encoder parity"
step "aarch64: unit tier against the installed wheel, under qemu"
rc=0; pytest_a64 "$A/unit.xml" "$TREE/tests/unit" || rc=$?
"$WORK/tools/bin/python" "$TREE/tests/wheel/junit_summary.py" "$A/unit.xml" "aarch64 unit tier (qemu-user)" \
  || rc=1
[ $rc -eq 0 ] || fail "aarch64: unit tier"

# Entries of older keys (a new point release, another crossenv pin) are not used again.
for old in "$CACHE"/sysroot-* "$CACHE"/crossenv-* "$CACHE"/qemu-* "$CACHE"/testdeps-*; do
  case "$old" in "$SYSROOT"|"$XDIR"|"$QDIR"|"$(dirname "$DEPS")") ;; *) rm -rf "$old" ;; esac
done

mkdir -p "$OUT"
cp "$WHEEL" "$OUT/"
step "aarch64: OK: $OUT/$NAME (tests under qemu $((SECONDS - T2)) s, aarch64 total $((SECONDS - T0)) s)"
