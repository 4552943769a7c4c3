"""The plugin's own modules from one file: the bundle's import fast path.

Each module the path finder imports costs a directory lookup, a ``stat``, an open/read/close of
its ``.pyc`` and the importlib machinery around them. The bundle (built once, immutable, made
by one interpreter) carries instead every pure-Python module of ``istio_cni`` compiled into
``ARCHIVE`` in its site-packages: the launcher reads that one file and installs a finder; a
module's code is unmarshalled only when it is imported. Extension modules (``_fastpath``,
``_nf``, ...) and anything the archive lacks go through the normal finders: the archive's
packages keep their real ``__path__``, and the ``.py`` files stay in the bundle for tracebacks.
``benchmarks/RESULTS.md`` ("One file for the plugin's modules") has the measurement.

Written by ``write`` (the bundle builder), read by ``serve`` (the launcher); the format lives
here only: ``HEADER``, the interpreter's bytecode magic, the index's size (8 bytes, little
endian), the ``marshal``-ed index ``{module name: (is package, offset, size)}``, then each
module's ``marshal``-ed code at its offset. A module's source path follows from its name
(``istio_cni/x/y.py`` or ``.../__init__.py``), so the archive cannot point anywhere else. Only the index is read
up front; a module's code is read (``pread``) when it is imported, so the process holds only
what it runs.
"""

import marshal

ARCHIVE = "istio_cni.modules"  # in site-packages, beside the package
HEADER = b"istio-cni module archive 2\n"

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (the ADD path's budget)
if TYPE_CHECKING:
    from collections.abc import Sequence
    from importlib.machinery import ModuleSpec
    from types import CodeType, ModuleType


def _magic() -> bytes:
    import _frozen_importlib_external  # loaded by the interpreter's start: costs nothing

    return _frozen_importlib_external.MAGIC_NUMBER


class _ArchiveFinder:
    """Meta path finder and loader for the modules in the archive open at ``fd``."""

    def __init__(self, site: str, fd: int, index: dict, file_size: int) -> None:
        self.site = site
        self.fd = fd
        self.index = index
        self.file_size = file_size

    def _entry(self, name: str) -> "tuple | None":
        """``name``'s index entry if it is well formed and inside the file, else None (the
        normal finders serve the module): a damaged index never leads to a huge read."""
        entry = self.index.get(name)
        if not (type(entry) is tuple and len(entry) == 3):
            return None
        is_package, offset, size = entry
        if not (type(is_package) is bool and type(offset) is int and type(size) is int):
            return None
        if not (0 <= offset and 0 < size and offset + size <= self.file_size):
            return None
        return entry

    def find_spec(self, name: str, path: "Sequence[str] | None" = None, target: object = None) -> "ModuleSpec | None":
        entry = self._entry(name)
        if entry is None:
            return None
        import _frozen_importlib

        is_package = entry[0]
        source = f"{self.site}/{name.replace('.', '/')}"
        origin = f"{source}/__init__.py" if is_package else f"{source}.py"
        # A duck-typed loader: importlib.abc.Loader would import importlib.abc on every ADD.
        spec = _frozen_importlib.ModuleSpec(name, self, origin=origin, is_package=is_package)  # type: ignore[arg-type]
        if is_package:
            spec.submodule_search_locations = [origin.rpartition("/")[0]]
        # No has_location: importlib would then work out __cached__ (a .pyc path nobody reads)
        # for every module, ~20 us each; exec_module sets __file__ itself.
        return spec

    def create_module(self, spec: "ModuleSpec") -> None:
        return None  # the default module object

    def exec_module(self, module: "ModuleType") -> None:
        spec: ModuleSpec = module.__spec__  # type: ignore[assignment]  # set by the import system
        module.__file__ = spec.origin
        exec(self._code(spec), module.__dict__)

    def _code(self, spec: "ModuleSpec") -> "CodeType":
        import _imp
        import posix

        origin = spec.origin or ""
        _, offset, size = self.index[spec.name]  # checked by find_spec
        try:
            code = marshal.loads(posix.pread(self.fd, size, offset))
        except (OSError, ValueError, EOFError, TypeError):  # a damaged entry: the source is beside it
            with open(origin, "rb") as f:
                code = compile(f.read(), origin, "exec", dont_inherit=True)
        # As SourceFileLoader does (CPython's own helper, not in typeshed): the bundle's real path.
        _imp._fix_co_filename(code, origin)  # type: ignore[attr-defined]
        return code


def serve(site: str) -> bool:
    """Serve the plugin's modules from ``<site>/ARCHIVE``; False (nothing changed, the normal
    finders serve them) when there is none or it was made by another interpreter. Never
    raises: the launcher calls it before the plugin's own error handling exists. The archive
    stays open (close-on-exec) for the life of this one-shot process."""
    import posix
    import sys

    prefix = HEADER + _magic()
    try:
        fd = posix.open(f"{site}/{ARCHIVE}", posix.O_RDONLY | posix.O_CLOEXEC)
    except Exception:
        return False
    try:
        file_size = posix.fstat(fd).st_size
        head = posix.read(fd, len(prefix) + 8)
        if len(head) != len(prefix) + 8 or not head.startswith(prefix):
            raise ValueError("not an archive of this interpreter")
        size = int.from_bytes(head[len(prefix) :], "little")
        if size > file_size - len(head):  # a damaged size field: never a read past the file
            raise ValueError("index larger than the archive")
        index = marshal.loads(posix.pread(fd, size, len(head)))
        if not isinstance(index, dict):
            raise ValueError("bad index")
    except Exception:
        posix.close(fd)
        return False
    sys.meta_path.insert(0, _ArchiveFinder(site, fd, index, file_size))
    return True


def write(site: str, out: str | None = None) -> int:
    """Compile every ``.py`` of the ``istio_cni`` package under ``site`` into ``<site>/ARCHIVE``
    (or ``out``); returns how many modules it holds. Build time only (the bundle builder)."""
    import os

    blobs: list[bytes] = []
    entries = []
    pkg_root = os.path.join(site, "istio_cni")
    for dirpath, dirnames, filenames in os.walk(pkg_root):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
        for fn in sorted(filenames):
            if not fn.endswith(".py"):
                continue
            path = os.path.join(dirpath, fn)
            rel = os.path.relpath(path, site)
            parts = rel[: -len(".py")].split(os.sep)
            is_package = parts[-1] == "__init__"
            name = ".".join(parts[:-1] if is_package else parts)
            with open(path, "rb") as f:
                code = compile(f.read(), f"site-packages/{rel}", "exec", dont_inherit=True)
            entries.append((name, is_package))
            blobs.append(marshal.dumps(code))
    prefix = HEADER + _magic()

    def index_at(start: int) -> bytes:
        index, offset = {}, start
        for (name, is_package), blob in zip(entries, blobs, strict=True):
            index[name] = (is_package, offset, len(blob))
            offset += len(blob)
        return marshal.dumps(index)

    # The offsets count the index's own size, which can move with the offsets (marshal writes
    # a repeated small int as a back-reference): recompute until the size holds still.
    index = b""
    while True:
        settled = index_at(len(prefix) + 8 + len(index))
        if len(settled) == len(index):
            break
        index = settled
    target = out or os.path.join(site, ARCHIVE)
    with open(target + ".tmp", "wb") as archive:
        archive.write(prefix + len(settled).to_bytes(8, "little") + settled + b"".join(blobs))
    os.replace(target + ".tmp", target)
    return len(entries)
