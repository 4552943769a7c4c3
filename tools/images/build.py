#!/usr/bin/python3
"""Build (or reuse) the container images of the node test tier, without any registry.

  base      Debian 12 (debootstrap from the apt mirror) + python3, venv, headers, CA bundle: the
            stand-in for python:3.11-slim-bookworm, the FROM of installer/Dockerfile
  node      installer/Dockerfile itself (the recipe users build), with PYTHON_IMAGE=<base>
  pause     the sandbox image containerd needs (tools/images/pause.c, static)
  workload  the test app / proxy (tools/images/workload.py on <base>)

Every image is tagged with the hash of its inputs (recipe, sources, base) and cached: a warm run
finds ``$CACHE/images/<name>-<hash>.tar`` (a docker-archive for ``ctr images import``) and builds
nothing. Each build writes ``<name>.build.log`` and ``<name>.status`` ("ok <ref> <archive>" or
"failed <step> <hash>"); tests/node reads them, so a failed build FAILS the tests naming the step.

Nothing touches the machine's mount table or network: every buildah/debootstrap call runs in a
private mount namespace (``unshare -m``), buildah's storage lives under the cache, and RUN steps
use the host network as is (``--network host``: no bridge, no NAT rules are created).

Usage: tools/images/build.py [name ...]   (default: all; prints "<name> <ref> <archive>")
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
CACHE = Path(os.environ.get("ISTIO_CNI_TOOLS_CACHE", Path.home() / ".cache" / "istio-cni-tools"))
IMAGES = CACHE / "images"
STORE, RUNROOT = IMAGES / "storage", IMAGES / "runroot"
HOST_CA = "/etc/ssl/certs/ca-certificates.crt"  # pip in the node build trusts what the host trusts
MIRROR = "http://deb.debian.org/debian"
SUITE = "bookworm"
# The packages python:3.11-slim-bookworm provides that installer/Dockerfile relies on (the
# official image ships Python's headers, hence libpython3.11-dev).
BASE_PACKAGES = ("python3", "python3-venv", "python-is-python3", "libpython3.11-dev", "ca-certificates")
RECIPE_VERSION = "1"  # bump when a recipe below changes in a way its inputs do not show
# The files installer/Dockerfile COPYs (its build context), as git sees them: tracked plus
# untracked-not-ignored, so build artefacts (*.so, generated .c, __pycache__) never enter.
NODE_CONTEXT = ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md", "src", "installer/istio_cni_installer")
DOCKERFILE = ROOT / "installer" / "Dockerfile"
NAMES = ("base", "pause", "workload", "node")
REPO_OF = {"base": "localhost/istio-cni-base", "pause": "localhost/istio-cni-pause",
           "workload": "localhost/istio-cni-workload", "node": "localhost/install-cni"}
STEP_TIMEOUT = 1200


class BuildFailed(RuntimeError):
    def __init__(self, step: str, detail: str = "") -> None:
        super().__init__(f"step {step} failed {detail}".strip())
        self.step = step


def _hash(*parts: bytes | str) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode() if isinstance(p, str) else p)
        h.update(b"\0")
    return h.hexdigest()[:16]


def node_context_files() -> list[str]:
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "--", *NODE_CONTEXT],
                         cwd=ROOT, capture_output=True, text=True, check=True, timeout=60).stdout
    return sorted(f for f in set(out.splitlines()) if (ROOT / f).is_file())


def input_hash(name: str, base_hash: str = "") -> str:
    if name == "base":
        return _hash(RECIPE_VERSION, MIRROR, SUITE, *BASE_PACKAGES)
    if name == "pause":
        return _hash(RECIPE_VERSION, (HERE / "pause.c").read_bytes())
    if name == "workload":
        return _hash(RECIPE_VERSION, base_hash, (HERE / "workload.py").read_bytes())
    files = node_context_files()
    return _hash(RECIPE_VERSION, base_hash, DOCKERFILE.read_bytes(),
                 *(part for f in files for part in (f, (ROOT / f).read_bytes())))


def private_namespace(argv: list[str]) -> list[str]:
    """``argv`` in a private mount namespace with its own /run: the mounts buildah and debootstrap
    make die with the namespace, and runc's state (/run/runc) never lands on the machine's /run."""
    return ["unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-c",
            'mount -t tmpfs -o mode=755 image-build-run /run && exec "$@"', "sh", *argv]


class Builder:
    def __init__(self, log) -> None:
        self.log = log

    def run(self, step: str, argv: list[str], *, private_mounts: bool = False, check: bool = True, **kw) -> str:
        """Run one command of a build, its output into the log; BuildFailed names the step."""
        if private_mounts:
            argv = private_namespace(argv)
        self.log.write(f"# step {step}: {' '.join(argv)}\n")
        self.log.flush()
        try:
            proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=self.log, text=True,
                                  timeout=STEP_TIMEOUT, **kw)
        except subprocess.TimeoutExpired:
            raise BuildFailed(step, f"(timed out after {STEP_TIMEOUT}s)") from None
        except FileNotFoundError as e:
            raise BuildFailed(step, f"({e.filename} not installed: tools/setup-apt.sh)") from None
        self.log.write(proc.stdout)
        if proc.returncode != 0 and check:
            raise BuildFailed(step, f"(exit {proc.returncode})")
        return proc.stdout.strip()

    def buildah(self, step: str, *args: str) -> str:
        return self.run(step, ["buildah", "--root", str(STORE), "--runroot", str(RUNROOT),
                               "--storage-driver", "overlay", *args], private_mounts=True)

    def has_image(self, ref: str) -> bool:
        proc = subprocess.run(private_namespace(["buildah", "--root", str(STORE), "--runroot", str(RUNROOT),
                                                 "--storage-driver", "overlay", "inspect", "--type", "image", ref]),
                              capture_output=True, timeout=120)
        return proc.returncode == 0

    def prune(self, ref: str, used: set[str], *, layer_cache: bool) -> None:
        """Keep buildah's storage bounded: drop older tags of ``ref``'s repository and every
        untagged layer-cache image that nothing kept builds on (so the apt steps of the node image
        stay cached while each source change's pip/bundle layers go). ``used``: ID prefixes of the
        images this build made or took from its cache (its ``--> <id>`` lines): kept. ``layer_cache``:
        this build ran ``bud --layers`` (only then are untagged images looked at: the chain of a
        multi-stage build's first stage hangs off no tagged image, only off this build's images)."""
        repo = ref.rsplit(":", 1)[0]
        try:
            images = json.loads((STORE / "overlay-images" / "images.json").read_text())
            layers = json.loads((STORE / "overlay-layers" / "layers.json").read_text())
        except (OSError, ValueError) as e:
            self.log.write(f"# prune skipped: storage index unreadable ({e})\n")
            return
        parent = {lay["id"]: lay.get("parent") for lay in layers}
        old_tags = [n for img in images for n in img.get("names") or []
                    if n.rsplit(":", 1)[0] == repo and n != ref]
        kept = [img for img in images if [n for n in img.get("names") or [] if n not in old_tags]
                or any(img["id"].startswith(u) for u in used)]
        ancestors: set[str] = set()
        for img in kept:
            layer = img.get("layer")
            while layer and layer not in ancestors:
                ancestors.add(layer)
                layer = parent.get(layer)
        kept_ids = {img["id"] for img in kept}
        garbage = [img["id"] for img in images if layer_cache and img["id"] not in kept_ids and not (
            img.get("names") or []) and img.get("layer") not in ancestors]
        for victim in old_tags + garbage:  # a failed removal costs disk, never the build
            self.run("prune", ["buildah", "--root", str(STORE), "--runroot", str(RUNROOT), "--storage-driver",
                               "overlay", "rmi", "--force", victim], private_mounts=True, check=False)

    def export(self, ref: str, archive: Path) -> None:
        tmp = archive.with_name(archive.name + ".tmp")
        tmp.unlink(missing_ok=True)
        self.buildah("export", "push", ref, f"docker-archive:{tmp}:{ref}")
        tmp.replace(archive)

    # -- recipes ----------------------------------------------------------------------------------
    def base(self, ref: str, work: Path) -> None:
        rootfs = work / "rootfs"
        self.run("debootstrap", ["debootstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}",
                                 SUITE, str(rootfs), MIRROR], private_mounts=True)
        for junk in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for p in (rootfs / junk).glob("*"):
                if p.is_file():
                    p.unlink()
        tar = work / "rootfs.tar"
        self.run("tar", ["tar", "-C", str(rootfs), "--numeric-owner", "--exclude=./dev/*",
                         "--exclude=./proc/*", "--exclude=./sys/*", "-cf", str(tar), "."])
        c = self.buildah("from", "from", "scratch")
        try:
            self.buildah("add", "add", c, str(tar), "/")
            path = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
            self.buildah("config", "config", "--env", path, "--env", "LANG=C.UTF-8", "--cmd", "/bin/bash", c)
            self.buildah("commit", "commit", "--rm", c, ref)
        except BaseException:
            subprocess.run(private_namespace(["buildah", "--root", str(STORE), "--runroot", str(RUNROOT), "rm", c]),
                           capture_output=True, timeout=120)
            raise

    def pause(self, ref: str, work: Path) -> None:
        binary = work / "pause"
        self.run("compile", ["gcc", "-static", "-O2", "-s", "-o", str(binary), str(HERE / "pause.c")])
        c = self.buildah("from", "from", "scratch")
        self.buildah("copy", "copy", "--chmod", "0755", c, str(binary), "/pause")
        self.buildah("config", "config", "--entrypoint", '["/pause"]', c)
        self.buildah("commit", "commit", "--rm", c, ref)

    def workload(self, ref: str, work: Path, base_ref: str) -> None:
        c = self.buildah("from", "from", "--pull-never", base_ref)
        self.buildah("copy", "copy", "--chmod", "0755", c, str(HERE / "workload.py"), "/usr/local/bin/workload")
        self.buildah("config", "config", "--entrypoint", "[]", "--cmd", "workload app", c)
        self.buildah("commit", "commit", "--rm", c, ref)

    def node(self, ref: str, work: Path, base_ref: str) -> None:
        ctx = work / "context"
        for f in node_context_files():
            (ctx / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, ctx / f)
        self.buildah("bud", "bud", "--isolation", "oci", "--network", "host", "--layers", "--pull-never",
                     "--volume", f"{HOST_CA}:{HOST_CA}:ro",
                     "--build-arg", f"PYTHON_IMAGE={base_ref}",
                     "-f", str(DOCKERFILE), "-t", ref, str(ctx))


def ensure(name: str, base_hash: str = "", *, force: bool = False) -> tuple[str, Path]:
    """Build image ``name`` unless its archive for today's inputs exists; returns (ref, archive)."""
    h = input_hash(name, base_hash)
    ref = f"{REPO_OF[name]}:{h}"
    archive = IMAGES / f"{name}-{h}.tar"
    status, logfile = IMAGES / f"{name}.status", IMAGES / f"{name}.build.log"
    if archive.exists() and not force:
        status.write_text(f"ok {ref} {archive}\n")
        return ref, archive
    t0 = time.monotonic()
    print(f"images: {name} {h}: building (log: {logfile})", flush=True)
    with open(logfile, "w") as log, tempfile.TemporaryDirectory(prefix=f"image-{name}-", dir=IMAGES) as work:
        log.write(f"# {time.strftime('%FT%TZ', time.gmtime())} building {ref}\n")
        b = Builder(log)
        try:
            if force or not b.has_image(ref):
                extra = []
                if base_hash:  # node / workload build FROM the base: reload it if storage lost it
                    base_ref = f"{REPO_OF['base']}:{base_hash}"
                    if not b.has_image(base_ref):
                        b.buildah("load-base", "pull", f"docker-archive:{IMAGES / f'base-{base_hash}.tar'}")
                    extra = [base_ref]
                getattr(b, name)(ref, Path(work), *extra)
            b.export(ref, archive)
            if name in ("node", "workload"):  # rebuilt on every change of their inputs
                log.flush()
                used = set(re.findall(r"^--> ([0-9a-f]{11,64})\s*$", logfile.read_text(errors="replace"), re.M))
                b.prune(ref, used, layer_cache=name == "node")
        except BuildFailed as e:
            status.write_text(f"failed {e.step} {h}\n")
            print(f"images: {name}: FAILED at step {e.step} (see {logfile})", file=sys.stderr, flush=True)
            raise
        log.write(f"# built in {time.monotonic() - t0:.0f}s\n")
    status.write_text(f"ok {ref} {archive}\n")
    for old in IMAGES.glob(f"{name}-*.tar"):  # one archive per image: older inputs are garbage
        if old != archive:
            old.unlink(missing_ok=True)
    print(f"images: {name} {h}: built in {time.monotonic() - t0:.0f}s", flush=True)
    return ref, archive


def ensure_all(names=NAMES) -> dict[str, tuple[str, Path]]:
    """Build what is missing (base first: node and workload build FROM it); one lock for all."""
    IMAGES.mkdir(parents=True, exist_ok=True)
    with open(IMAGES / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        out: dict[str, tuple[str, Path]] = {}
        base_hash = input_hash("base")
        need_base = bool(set(names) & {"node", "workload"})
        for name in NAMES:
            if name not in names and not (name == "base" and need_base):
                continue
            try:
                if name == "base":
                    # The base is only a FROM: its archive is what says "built and exported".
                    out[name] = ensure(name)
                else:
                    out[name] = ensure(name, base_hash if name in ("node", "workload") else "")
            except BuildFailed:
                if name == "base":  # node and workload build FROM it: they fail with it
                    for dep in ("node", "workload"):
                        (IMAGES / f"{dep}.status").write_text(f"failed base-image {input_hash(dep, base_hash)}\n")
                    names = tuple(n for n in names if n not in ("node", "workload"))
        return out


if __name__ == "__main__":
    wanted = tuple(sys.argv[1:]) or NAMES
    unknown = set(wanted) - set(NAMES)
    if unknown:
        sys.exit(f"images: unknown image {sorted(unknown)} (known: {', '.join(NAMES)})")
    built = ensure_all(wanted)
    for n in wanted:
        if n in built:
            print(n, *built[n])
    # Like tools/go-tools.sh: a failed image never aborts `make setup`; the tests needing it fail.
    sys.exit(0)
