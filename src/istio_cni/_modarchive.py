"""The plugin's own modules from one file: the bundle's import fast path.

Each module the path finder imports costs a directory lookup, a ``stat``, an open/read/close of
its ``.pyc`` and the importlib machinery around them. The bundle (built once, immutable, made
by one interpreter) carries instead every pure-Python module of ``istio_cni`` compiled into
``ARCHIVE`` in its site-packages: the launcher reads that one file and installs a finder; a
module's code is unmarshalled only when it is imported. Extension modules (``_fastpath``,
``_nf``, ...) and anything the archive lacks go through the normal finders: the archive's
packages keep their real ``__path__``, and the ``.py`` files stay in the bundle for tracebacks.
``benchmarks/RESULTS.md`` ("One file for the plugin's modules") has the measurement.

Two things the archive does beyond a directory of ``.pyc`` files, both decided at build time:

* **A module's own imports skip importlib.** An ``import`` that misses ``sys.modules`` runs
  importlib's Python code (module lock, finder walk, spec, attributes), ~45 us per module on
  the ADD path's machine. The index records each module's *unconditional module-level*
  imports of other archived modules (``deps``); before a module's body runs, the loader
  executes those it lacks directly (parents first, then the module, registered in
  ``sys.modules`` before its own body runs, as importlib does), so the body's ``import``
  statements find them loaded. Imports inside functions stay lazy and anything conditional
  (``if``/``try``) is left to the body. A cycle ends at a module already registered, as with
  importlib.
* **``from __future__ import ...`` becomes a compiler flag**: the statement would import the
  ``__future__`` module (~0.3 ms on the ADD path) only to bind a name nobody reads.

Written by ``write`` (the bundle builder), read by ``serve`` (the launcher); the format lives
here only: ``HEADER``, the interpreter's bytecode magic, the index's size (8 bytes, little
endian), the ``marshal``-ed index ``{module name: (is package, offset, size, deps)}``, then
each module's ``marshal``-ed code at its offset. A module's source path follows from its name
(``istio_cni/x/y.py`` or ``.../__init__.py``), so the archive cannot point anywhere else. Only the index is read
up front; a module's code is read (``pread``) when it is imported, so the process holds only
what it runs. Only the one-shot plugin process serves the archive, and it imports on one
thread: the direct loads take no import lock.
"""

import marshal
import sys

ARCHIVE = "istio_cni.modules"  # in site-packages, beside the package
HEADER = b"istio-cni module archive 3\n"

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (the ADD path's budget)
if TYPE_CHECKING:
    from collections.abc import Container, Sequence
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
        if not (type(entry) is tuple and len(entry) == 4):
            return None
        is_package, offset, size, deps = entry
        if not (type(is_package) is bool and type(offset) is int and type(size) is int and type(deps) is tuple):
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
        spec.loader_state = entry[3]  # its deps, for exec_module
        if is_package:
            spec.submodule_search_locations = [origin.rpartition("/")[0]]
        # No has_location: importlib would then work out __cached__ (a .pyc path nobody reads)
        # for every module, ~20 us each; exec_module sets __file__ itself.
        return spec

    def create_module(self, spec: "ModuleSpec") -> None:
        return None  # the default module object

    def exec_module(self, module: "ModuleType") -> None:
        spec: ModuleSpec = module.__spec__  # type: ignore[assignment]  # set by the import system
        for dep in spec.loader_state:
            if type(dep) is str and dep not in sys.modules:
                self._load(dep)
        module.__file__ = spec.origin
        exec(self._code(spec), module.__dict__)

    def _load(self, name: str) -> None:
        """Import archived module ``name`` as importlib would, without importlib: its parent
        first, the module object registered before its body runs (``exec_module`` loads its
        deps, then runs it), removed again if that raises, then bound on its parent. A name
        the archive cannot serve is left alone: the importing body's own statement imports it
        (or reports it) through the normal finders."""
        spec = self.find_spec(name)
        if spec is None:
            return
        parent, _, child = name.rpartition(".")
        if parent and parent not in sys.modules:
            self._load(parent)
            if parent not in sys.modules or name in sys.modules:  # not served; or its parent imported it
                return
        import _frozen_importlib  # loaded by the interpreter's start: costs nothing

        module = _frozen_importlib.module_from_spec(spec)  # importlib's own module set-up
        sys.modules[name] = module
        spec._initializing = True  # type: ignore[attr-defined]  # importlib's "partially initialized" marker
        try:
            self.exec_module(module)
        except BaseException:
            sys.modules.pop(name, None)
            raise
        finally:
            spec._initializing = False  # type: ignore[attr-defined]
        if parent:
            setattr(sys.modules[parent], child, sys.modules[name])

    def _code(self, spec: "ModuleSpec") -> "CodeType":
        import _imp
        import posix

        origin = spec.origin or ""
        _, offset, size, _ = self.index[spec.name]  # checked by find_spec
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

    sources: dict[str, tuple[bool, str, bytes]] = {}  # name -> (is package, path as compiled, source)
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
                sources[name] = (is_package, f"site-packages/{rel}", f.read())
    entries, blobs = [], []
    for name, (is_package, filename, source) in sources.items():
        code, deps = _compile(name, is_package, filename, source, sources)
        entries.append((name, is_package, deps))
        blobs.append(marshal.dumps(code))
    prefix = HEADER + _magic()

    def index_at(start: int) -> bytes:
        index, offset = {}, start
        for (name, is_package, deps), blob in zip(entries, blobs, strict=True):
            index[name] = (is_package, offset, len(blob), deps)
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


def _compile(
    name: str, is_package: bool, filename: str, source: bytes, archived: "Container[str]"
) -> "tuple[CodeType, tuple[str, ...]]":
    """``source``'s code, its ``from __future__`` statements turned into compiler flags, and
    the archived modules its unconditional module-level imports name (``deps``, in order,
    each after its parents). Build time only."""
    import __future__

    import ast

    tree = ast.parse(source, filename)
    flags, body, deps = 0, [], []
    package = name if is_package else name.rpartition(".")[0]

    def need(module: str) -> None:
        parts = module.split(".")
        for i in range(1, len(parts) + 1):
            dep = ".".join(parts[:i])
            if dep in archived and dep != name and dep not in deps:
                deps.append(dep)

    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module == "__future__":
            for alias in node.names:
                flags |= getattr(__future__, alias.name).compiler_flag
            continue
        body.append(node)
        if isinstance(node, ast.Import):
            for alias in node.names:
                need(alias.name)
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")
            if node.level:
                base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            need(module)
            for alias in node.names:  # ``from pkg import submodule``
                if f"{module}.{alias.name}" in archived:
                    need(f"{module}.{alias.name}")
    tree.body = body
    code = compile(tree, filename, "exec", flags=flags, dont_inherit=True)
    return code, tuple(deps)
