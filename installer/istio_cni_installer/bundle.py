"""Build the self-contained plugin bundle from the running interpreter.

The host has no Python, so the plugin ships as a directory holding an interpreter, a pruned
standard library, the ``istio_cni`` package (with its compiled modules), cffi's backend and the
shared libraries those link against (libpython, libssl for the API lookup, libiptc/libnftables),
except glibc itself, which every host has. Layout::

    bin/python3.X                 the interpreter (finds lib/python3.X by its own location)
    bin/istio-cni-front           the compiled front, unconfigured (the installer configures
                                  its copy at <bin>/istio-cni: front.py)
    lib/libpython3.X.so.1.0 ...   non-glibc shared libraries (launcher sets LD_LIBRARY_PATH)
    lib/python3.X/                stdlib minus tests, idle, tkinter, ensurepip, lib2to3, ...
    site-packages/istio_cni/      the plugin (+ _cffi_backend*.so)
    site-packages/istio_cni.modules   the plugin's pure-Python modules compiled into one file,
                                  which the launcher serves them from (istio_cni._modarchive)
    site-packages/yaml/           PyYAML + libyaml binding (YAML kubeconfigs only)
    MANIFEST.json                 id (content hash), interpreter path, size

The image build runs ``python -m istio_cni_installer.bundle --output DIR`` once; the installer
copies DIR to the host (``binaries.py``). Tests build it once per session from the venv.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

from istio_cni._modarchive import ARCHIVE, write as write_archive
from istio_cni.value import Value

# Directories of the stdlib the plugin never imports (and that make up most of its size).
STDLIB_SKIP_DIRS = {
    "test",
    "tests",
    "idlelib",
    "tkinter",
    "turtledemo",
    "ensurepip",
    "lib2to3",
    "distutils",
    "pydoc_data",
    "site-packages",
    "dist-packages",
    "venv",
    "curses",
    "sqlite3",
}
STDLIB_SKIP_PREFIXES = ("config-",)  # static libpython.a and Makefile
# Extension modules the plugin never loads; several drag in kerberos/ncurses/sqlite libraries.
DYNLOAD_SKIP_PREFIXES = (
    "_tkinter",
    "_test",
    "xxlimited",
    "_ctypes_test",
    "_xxtestfuzz",
    "xxsubtype",
    "_xxsubinterpreters",
    "nis.",
    "_curses",
    "readline.",
    "_sqlite3",
    "_dbm",
    "_gdbm",
    "spwd.",
    "_crypt.",
)
# Build inputs and type stubs (.pyi: for type checkers, the wheel ships them) stay out.
PACKAGE_SKIP_SUFFIXES = (".c", ".pyx", ".cffi.py", ".pyc", ".o", ".pyi")
PACKAGE_SKIP_DIRS = {"__pycache__", "tools"}  # side tools (istio_cni.tools): kubelet only execs the plugin
# The compiled front, built by setup.py into the istio_cni package; the bundle holds it in bin/.
FRONT_BUILT = "_front"
FRONT = "bin/istio-cni-front"
# glibc's own libraries: present on every host and must match its ld.so, so never bundled.
GLIBC = (
    "linux-vdso",
    "ld-linux",
    "libc.so",
    "libm.so",
    "libpthread.so",
    "libdl.so",
    "librt.so",
    "libutil.so",
    "libresolv.so",
    "libnsl.so",
    "libanl.so",
    "libmvec.so",
    "libBrokenLocale",
)


class BundleInfo(Value):
    __slots__ = ("path", "bundle_id", "python", "size_bytes", "files")
    path: str
    bundle_id: str
    python: str  # the interpreter, relative to the bundle
    size_bytes: int
    files: int


def _ignore_stdlib(src: str, names: list[str]) -> set[str]:
    skip = set()
    for n in names:
        full = os.path.join(src, n)
        if os.path.isdir(full):
            if n in STDLIB_SKIP_DIRS or n.startswith(STDLIB_SKIP_PREFIXES):
                skip.add(n)
        elif ".opt-1." in n or ".opt-2." in n or n.startswith(DYNLOAD_SKIP_PREFIXES):
            skip.add(n)
    return skip


def _ignore_package(src: str, names: list[str]) -> set[str]:
    return {n for n in names if n in PACKAGE_SKIP_DIRS or n == FRONT_BUILT or n.endswith(PACKAGE_SKIP_SUFFIXES)}


def _elf_deps(path: Path) -> list[Path]:
    """Resolved non-glibc shared libraries ``path`` needs (via ldd)."""
    r = subprocess.run(["ldd", str(path)], capture_output=True, text=True, timeout=30)
    out = []
    for line in r.stdout.splitlines():
        parts = line.split("=>")
        if len(parts) != 2:
            continue
        soname, target = parts[0].strip(), parts[1].strip().split(" (")[0].strip()
        if soname.startswith(GLIBC) or not target.startswith("/"):
            continue
        out.append(Path(target))
    return out


def _is_elf(p: Path) -> bool:
    try:
        with open(p, "rb") as f:
            return f.read(4) == b"\x7fELF"
    except OSError:
        return False


def _strip_elves(root: Path) -> None:
    """Drop debug symbols from the bundle's ELF files (libpython alone shrinks ~4x)."""
    strip = shutil.which("strip")
    if not strip:
        return
    elves = [str(p) for p in root.rglob("*") if p.is_file() and not p.is_symlink() and _is_elf(p)]
    for i in range(0, len(elves), 100):
        subprocess.run([strip, "--strip-unneeded", *elves[i : i + 100]], capture_output=True, timeout=120, check=False)


# Part of the bundle id: bump when the way the bundle is made changes but its hashed inputs
# do not (e.g. the .pyc invalidation mode below).
BUNDLE_FORMAT = b"istio-cni-bundle 4; pyc unchecked-hash; compiled front; module archive"


def _content_id(root: Path) -> tuple[str, int, int]:
    """(id, size, file count). The id hashes what the bundle is made of - the interpreter and
    every library, source and extension module - but not the ``.pyc`` files: those are derived
    from the hashed sources by the hashed interpreter, and their bytes are not reproducible
    (marshal output varies with the compiling process's state). So the same image gives the
    same id on every start, and the installer finds its bundle already deployed."""
    h, size, files = hashlib.sha256(BUNDLE_FORMAT + b"\0"), 0, 0
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for n in sorted(filenames):
            p = Path(dirpath, n)
            if p.name == "MANIFEST.json" and p.parent == root:
                continue
            data = p.read_bytes()
            size += len(data)
            files += 1
            if n.endswith(".pyc") or n == ARCHIVE:  # both compiled from the hashed sources
                continue
            h.update(str(p.relative_to(root)).encode() + b"\0" + hashlib.sha256(data).digest())
    return h.hexdigest()[:16], size, files


def _copy_yaml(site: Path) -> None:
    """PyYAML (with its libyaml extension ``yaml._yaml``): the plugin parses YAML kubeconfigs
    with it, importing it only for them (JSON ones take the fast path)."""
    import yaml  # build-time only: see build()

    shutil.copytree(Path(yaml.__file__).parent, site / "yaml", ignore=_ignore_package)


def build(output: Path | str) -> BundleInfo:
    """Build the bundle into ``output`` (replaced if present) and return its description."""
    # Imported here, not at the top: the node program imports this module at every start for
    # read_manifest only, and building (images, make demo, an unset PLUGIN_BUNDLE_DIR) is rare;
    # PyYAML alone costs ~15 ms and ~1.7 MB RSS (`python -I -c 'import yaml'`, measured here).
    import compileall
    import py_compile

    import _cffi_backend

    import istio_cni

    output = Path(output).resolve()
    ver = f"python{sys.version_info.major}.{sys.version_info.minor}"
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    dynload = Path(sysconfig.get_config_var("DESTSHARED") or stdlib / "lib-dynload")
    exe = Path(os.path.realpath(getattr(sys, "_base_executable", sys.executable)))

    # A fresh private (0700) dir with an unpredictable name: nothing planted at a guessable
    # staging path (a symlink, say) can redirect the copy.
    output.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{output.name}.tmp.", dir=output.parent))
    stage.chmod(0o755)  # mkdtemp's 0700 would hide the bundle from a capability-less reader
    (stage / "bin").mkdir()
    (stage / "lib").mkdir()
    shutil.copy2(exe, stage / "bin" / ver)
    front = Path(istio_cni.__file__).parent / FRONT_BUILT
    if not front.is_file():  # mandatory, like the compiled modules: no shell launcher fallback
        raise FileNotFoundError(f"{front}: the compiled front is missing (build the package: make venv)")
    shutil.copy2(front, stage / FRONT)
    shutil.copytree(stdlib, stage / "lib" / ver, ignore=_ignore_stdlib, symlinks=False)
    if not (stage / "lib" / ver / "lib-dynload").is_dir():
        shutil.copytree(dynload, stage / "lib" / ver / "lib-dynload", ignore=_ignore_stdlib)
    site = stage / "site-packages"
    shutil.copytree(Path(istio_cni.__file__).parent, site / "istio_cni", ignore=_ignore_package)
    shutil.copy2(_cffi_backend.__file__, site / Path(_cffi_backend.__file__).name)
    _copy_yaml(site)

    # Shared libraries: the transitive non-glibc closure of every ELF file in the bundle.
    todo = [p for p in stage.rglob("*") if p.is_file() and (p.suffix == ".so" or p.name == ver) and _is_elf(p)]
    seen: set[str] = set()
    while todo:
        for dep in _elf_deps(todo.pop()):
            if dep.name in seen:
                continue
            seen.add(dep.name)
            dst = stage / "lib" / dep.name
            shutil.copy2(os.path.realpath(dep), dst)
            todo.append(dst)

    _strip_elves(stage)
    # The bundle is immutable and content-addressed: unchecked-hash .pyc files never consult
    # the sources' mtimes, and ``ddir`` keeps the temporary build path out of them (the import
    # system points co_filename at the real source path when it loads them).
    compileall.compile_dir(
        str(site),
        quiet=1,
        workers=1,
        ddir="site-packages",
        invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH,
    )
    # The launcher reads the plugin's modules from one file (istio_cni._modarchive).
    write_archive(str(site))
    bundle_id, size, files = _content_id(stage)
    manifest = {
        "id": bundle_id,
        "python": f"bin/{ver}",
        "site": "site-packages",
        "lib": "lib",
        "front": FRONT,
        "size_bytes": size,
        "files": files,
        "python_version": sys.version.split()[0],
    }
    (stage / "MANIFEST.json").write_text(json.dumps(manifest, indent=2) + "\n")

    old = output.with_name(f".{output.name}.old.{os.getpid()}")
    if output.exists():
        os.rename(output, old)
    os.rename(stage, output)
    shutil.rmtree(old, ignore_errors=True)
    return BundleInfo(path=str(output), bundle_id=bundle_id, python=f"bin/{ver}", size_bytes=size, files=files)


def read_manifest(bundle_dir: Path | str) -> dict:
    path = Path(bundle_dir) / "MANIFEST.json"
    try:
        m = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise FileNotFoundError(f"{path}: not a plugin bundle ({e})") from None
    for key in ("id", "python", "site", "lib", "front"):
        if key not in m:
            raise FileNotFoundError(f"{path}: manifest lacks {key!r}")
    return m


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m istio_cni_installer.bundle",
        description="Build the self-contained istio-cni plugin bundle "
        "(interpreter + pruned stdlib + istio_cni + shared libraries).",
    )
    p.add_argument("--output", required=True, help="directory to create (replaced if present)")
    args = p.parse_args(argv)
    info = build(args.output)
    print(
        json.dumps(
            {
                "path": info.path,
                "id": info.bundle_id,
                "size_bytes": info.size_bytes,
                "size_mib": round(info.size_bytes / 2**20, 1),
                "files": info.files,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
