"""Deploy the plugin bundle and its ``istio-cni`` launcher into the host CNI bin dir(s).

On the host::

    <bin>/istio-cni                    the compiled front, configured for this bundle (front.py;
                                       written atomically, last)
    <bin>/istio-cni.d/<bundle id>/     the bundle, complete before the launcher points at it

A new bundle goes into a temp directory that is renamed into place once every file is
fsynced, and only then is the launcher swapped, so kubelet execs either the old complete
bundle or the new complete one. The previous bundle is kept (an exec that started just before
the swap may still be importing from it); older ones are deleted. Nothing else in the bin dir
is touched.

Uninstall renames the DEL-only stand-in (``standin.py``) over the launcher instead of deleting
it, so a runtime that DELs from its cached config still finds an ``istio-cni``; a later install
recognises the stand-in by its mark and renames the launcher over it. Every change of
``<bin>/istio-cni`` is a rename over the old file: it never is absent in between.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import tempfile
from pathlib import Path

from istio_cni.config import AGENT_SOCKET_NAME
from istio_cni.log import log
from istio_cni.versions import SUPPORTED_VERSIONS

from .atomic import TMP_MARK, fsync_dir, remove_atomic, remove_stale_temps, write_atomic
from .bundle import read_manifest
from .front import configure
from .standin import is_standin, standin_text

PLUGIN = "istio-cni"
BUNDLE_DIR = "istio-cni.d"
COMPLETE = ".complete"


def launch_code(site: str) -> str:
    """The ``-c`` program the bundled interpreter runs: the bundle's site-packages first, the
    plugin's modules served from the bundle's module archive (``istio_cni._modarchive``), then
    the plugin. LD_LIBRARY_PATH is read by ld.so at exec and again by every later dlopen, so it
    is dropped from the environment right away: programs the plugin runs must not see our
    libraries. Through ``posix``, since the ADD path does not import ``os``
    (``istio_cni.environ``); ``os.environ``, if a later path imports ``os``, is built on the
    same dict. The cyclic garbage collector is off: a one-shot process that allocates a few
    MB frees everything at exit, and its collections during the imports cost ~0.6 ms per exec
    (benchmarks/RESULTS.md, "Run 7")."""
    return (
        "import gc;gc.disable();"
        "import posix,sys;posix.environ.pop(b'LD_LIBRARY_PATH',None);posix.unsetenv('LD_LIBRARY_PATH');"
        f"sys.path.insert(0,{site!r});from istio_cni._modarchive import serve;serve({site!r});"
        "from istio_cni.__main__ import main;main()"
    )


def front_config(host_bundle: str, manifest: dict) -> dict[str, str]:
    """What the front execs for a bundle at ``host_bundle`` (the path the host's kubelet sees):
    ``LD_LIBRARY_PATH=<lib> <python> -I -S -c <code> "$@"``. The host needs no Python: the
    bundled interpreter runs isolated (-I -S) with only the bundle on sys.path. With the
    supported versions and the agent's socket name the front serves ordinary agent-path ADDs
    itself (``src/front/agent.h``)."""
    return {
        "python": f"{host_bundle}/{manifest['python']}",
        "lib": f"{host_bundle}/{manifest['lib']}",
        "code": launch_code(f"{host_bundle}/{manifest['site']}"),
        "versions": ",".join(SUPPORTED_VERSIONS),
        "agent_socket_name": AGENT_SOCKET_NAME,
    }


def launcher_bytes(bundle_dir: Path, host_bundle: str, manifest: dict) -> bytes:
    """``<bin>/istio-cni``: the bundle's compiled front, configured for ``host_bundle``."""
    try:
        front = (Path(bundle_dir) / manifest["front"]).read_bytes()
    except OSError as e:
        raise FileNotFoundError(f"{bundle_dir}: the bundle's front executable is unreadable ({e})") from None
    return configure(front, front_config(host_bundle, manifest))


def _syncfs(d: Path) -> None:
    """Flush the whole filesystem holding ``d`` in one call: far cheaper than an fsync per file
    for a bundle of ~1000 files, with the same guarantee before the rename that publishes it."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if libc.syncfs(fd) != 0:
            e = ctypes.get_errno()
            raise OSError(e, f"syncfs {d}: {os.strerror(e)}")
    finally:
        os.close(fd)


def _link_or_copy(src: str, dst: str) -> None:
    # The bundle is content-addressed and never modified in place, so when source and bin dir
    # share a filesystem (node images that pre-stage bundles, tests) a hard link is a safe copy.
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _copy_tree_durably(src: Path, dst: Path) -> None:
    shutil.copytree(src, dst, symlinks=True, copy_function=_link_or_copy, dirs_exist_ok=True)
    _syncfs(dst)


class Binaries:
    """The plugin in one bin dir (``mounted`` here, ``host`` as kubelet sees it)."""

    def __init__(self, bundle_dir: Path | str, mounted: str, host: str, update: bool = True) -> None:
        self.bundle = Path(bundle_dir)
        self.manifest = read_manifest(self.bundle)
        self.dir = Path(mounted)
        self.host = host.rstrip("/") or "/"
        self.update = update
        self.bundle_id = self.manifest["id"]
        self.target = self.dir / BUNDLE_DIR / self.bundle_id
        self.launcher = self.dir / PLUGIN
        self.content = launcher_bytes(self.bundle, f"{self.host}/{BUNDLE_DIR}/{self.bundle_id}", self.manifest)

    def check(self) -> list[str]:
        problems = []
        try:
            have = self.launcher.read_bytes()
        except FileNotFoundError:
            return [f"{self.launcher} missing"]
        if is_standin(have):
            return [f"{self.launcher} is the DEL-only stand-in left by an uninstall"]
        if not self.update:
            return []
        if have != self.content:
            problems.append(f"{self.launcher} is not our launcher for bundle {self.bundle_id}")
        if not os.access(self.launcher, os.X_OK):
            problems.append(f"{self.launcher} is not executable")
        if not self._bundle_complete():
            problems.append(f"bundle {self.target} missing or incomplete")
        return problems

    def _bundle_complete(self) -> bool:
        return (self.target / COMPLETE).exists() and (self.target / self.manifest["python"]).exists()

    def ensure(self) -> bool:
        """Install or repair; True when something was written."""
        if not self.check():
            return False
        if not self.update and self.launcher.exists() and not self._is_standin():
            log.info("UPDATE_CNI_BINARIES=false: keeping the existing plugin", path=str(self.launcher))
            return False
        parent = self.dir / BUNDLE_DIR
        parent.mkdir(exist_ok=True)
        remove_stale_temps(parent)
        remove_stale_temps(self.dir, (PLUGIN,))
        if not self._bundle_complete():
            shutil.rmtree(self.target, ignore_errors=True)
            # mkdtemp: an unpredictable name made by mkdir, which never follows a planted link
            tmp = Path(tempfile.mkdtemp(prefix=f".{self.bundle_id}{TMP_MARK}", dir=parent))
            _copy_tree_durably(self.bundle, tmp)
            write_atomic(tmp / COMPLETE, self.bundle_id + "\n")
            os.rename(tmp, self.target)
            fsync_dir(parent)
        write_atomic(self.launcher, self.content, 0o755, sync_dir=True)
        self._prune(parent)
        log.info("plugin installed", launcher=str(self.launcher), bundle=self.bundle_id)
        return True

    def _prune(self, parent: Path) -> None:
        others = [p for p in parent.iterdir() if p.is_dir() and p.name != self.bundle_id and not p.name.startswith(".")]
        others.sort(key=lambda p: p.stat().st_mtime, reverse=True)
        for old in others[1:]:  # keep the newest previous bundle for in-flight execs
            shutil.rmtree(old, ignore_errors=True)

    def _is_standin(self) -> bool:
        try:
            return is_standin(self.launcher.read_bytes())
        except OSError:
            return False

    def remove(self, leave_standin: bool = False) -> bool:
        """Uninstall: the DEL-only stand-in replaces the launcher (``leave_standin``, when an
        ``istio-cni`` is there), or the launcher is deleted; then our bundle dir goes. Nothing
        else in the bin dir is touched."""
        if leave_standin and os.path.lexists(self.launcher):
            removed = not self._is_standin()
            if removed:  # the rename replaces the launcher: no moment without an istio-cni
                write_atomic(self.launcher, standin_text(), 0o755, sync_dir=True)
        else:
            removed = remove_atomic(self.launcher)
        parent = self.dir / BUNDLE_DIR
        if parent.is_dir():
            shutil.rmtree(parent, ignore_errors=True)
            removed = True
        return removed
