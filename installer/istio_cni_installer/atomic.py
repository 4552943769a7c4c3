"""Crash-safe file writes: temp file in the same directory, fsync, rename, fsync the directory.

kubelet and other CNI agents read the files we write at any moment, and the installer can be
SIGKILLed mid-write, so a reader must only ever see the old content or the new content. Temp
names start with a dot and end in ``.tmp.<random>``: kubelet only loads ``*.conf``/
``*.conflist``/``*.json``, so it never picks up a half-written temp file, and
``remove_stale_temps`` clears the leftovers of a crashed predecessor.

The directories we write into (the host's CNI conf and bin dirs) may be writable by other
node components, so the temp file is created the way ``tempfile.mkstemp`` does it: an
unpredictable name, ``O_CREAT|O_EXCL|O_NOFOLLOW`` (a planted file or symlink at that name makes
the open fail instead of being followed or truncated), and a new name on collision.
"""

from __future__ import annotations

import os
import secrets
import shutil
from pathlib import Path

TMP_MARK = ".tmp."
CREATE_ATTEMPTS = 16
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def _random_suffix() -> str:
    return secrets.token_hex(8)


def temp_name(final: Path, suffix: str) -> Path:
    return final.with_name(f".{final.name}{TMP_MARK}{suffix}")


def create_temp(final: Path, mode: int) -> tuple[int, Path]:
    """A new, exclusively created temp file next to ``final``: (fd open for writing, path).
    Raises FileExistsError when CREATE_ATTEMPTS random names are all taken."""
    for _ in range(CREATE_ATTEMPTS):
        tmp = temp_name(final, _random_suffix())
        try:
            return os.open(tmp, _CREATE_FLAGS, mode), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temp name next to {final} after {CREATE_ATTEMPTS} attempts")


def fsync_dir(d: Path) -> None:
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path | str, data: bytes | str, mode: int = 0o644, sync_dir: bool = False) -> None:
    """Replace ``path`` with ``data``; the file has ``mode`` from its first byte on.

    The data is fsynced before the rename, so even a power cut never leaves an empty or partial
    file. The directory is not fsynced unless asked: after a power cut the rename may be lost,
    which leaves the previous complete file - exactly what the installer repairs on start - and
    skipping it halves the time a drift repair takes (measured in benchmarks/bench_installer.py).
    """
    path = Path(path)
    if isinstance(data, str):
        data = data.encode()
    fd, tmp = create_temp(path, mode)
    try:
        os.fchmod(fd, mode)  # O_CREAT's mode is filtered by the umask; the caller's mode is exact
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        _unlink_quietly(tmp)
        raise
    os.close(fd)
    try:
        os.replace(tmp, path)
    except BaseException:
        _unlink_quietly(tmp)
        raise
    if sync_dir:
        fsync_dir(path.parent)


def remove_atomic(path: Path | str) -> bool:
    """Unlink ``path`` (durably); False when it was already gone."""
    path = Path(path)
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    fsync_dir(path.parent)
    return True


def remove_stale_temps(d: Path | str, names: tuple[str, ...] | None = None) -> list[str]:
    """Delete our temp files left by a crashed run (only names that look like ours)."""
    removed: list[str] = []
    try:
        entries = list(os.scandir(d))
    except FileNotFoundError:
        return removed
    for e in entries:
        n = e.name
        if not (n.startswith(".") and TMP_MARK in n):
            continue
        base = n[1 : n.rindex(TMP_MARK)]
        if names is not None and base not in names:
            continue
        if e.is_dir(follow_symlinks=False):
            shutil.rmtree(e.path, ignore_errors=True)
        else:
            _unlink_quietly(Path(e.path))
        removed.append(n)
    return removed


def _unlink_quietly(p: Path) -> None:
    try:
        p.unlink()
    except FileNotFoundError:
        pass
