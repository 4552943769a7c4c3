"""The bundle's module archive (istio_cni._modarchive): written once, served by the launcher,
falling back to the normal finders whenever it cannot be trusted."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

import istio_cni._modarchive as modarchive

# A package shaped like the plugin's (a subpackage, a relative import, a function that raises),
# named istio_cni because the archive holds that package; it carries a copy of the real loader.
FILES = {
    "istio_cni/__init__.py": "",
    "istio_cni/a.py": "X = 1\n",
    "istio_cni/sub/__init__.py": "",
    "istio_cni/sub/b.py": "from .. import a\nY = a.X + 1\n\n\ndef boom():\n    raise ValueError('boom from b')\n",
}

PROBE = """
import json, sys, traceback
site = sys.argv[1]
sys.path.insert(0, site)
from istio_cni._modarchive import serve
served = serve(site)
import istio_cni.sub.b as b
try:
    b.boom()
except ValueError:
    tb = traceback.format_exc()
print(json.dumps({"served": served, "Y": b.Y, "file": b.__file__, "loader": type(b.__spec__.loader).__name__,
                  "path": list(sys.modules["istio_cni.sub"].__path__), "tb": tb}))
"""


@pytest.fixture
def site(tmp_path):
    root = tmp_path / "site"
    for rel, text in FILES.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    shutil.copy(modarchive.__file__, root / "istio_cni" / "_modarchive.py")
    return root


def run(site: Path) -> dict:
    r = subprocess.run([sys.executable, "-I", "-S", "-c", PROBE, str(site)], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_modules_come_from_the_archive_with_their_real_paths(site):
    assert modarchive.write(str(site)) == 5
    (site / "istio_cni" / "a.py").write_text("X = 99\n")  # the archive, not the disk, is served
    got = run(site)
    assert got["served"] is True
    assert got["Y"] == 2
    assert got["loader"] == "_ArchiveFinder"
    assert got["file"] == f"{site}/istio_cni/sub/b.py"
    assert got["path"] == [f"{site}/istio_cni/sub"]  # unarchived children (extension modules) still found
    assert f'File "{site}/istio_cni/sub/b.py", line 6, in boom' in got["tb"]
    assert "raise ValueError('boom from b')" in got["tb"]  # source lines from the file beside it


def test_without_an_archive_the_normal_finders_serve(site):
    got = run(site)
    assert got["served"] is False and got["loader"] == "SourceFileLoader" and got["Y"] == 2


@pytest.mark.parametrize("damage", ["header", "magic", "truncated", "index"])
def test_an_archive_that_cannot_be_trusted_is_ignored(site, damage):
    modarchive.write(str(site))
    path = site / modarchive.ARCHIVE
    data = bytearray(path.read_bytes())
    start = len(modarchive.HEADER)
    if damage == "header":
        data[0:8] = b"garbage!"
    elif damage == "magic":  # another interpreter's bytecode
        data[start] ^= 0xFF
    elif damage == "truncated":
        data = data[: start + 6]
    else:
        data[start + 12 : start + 40] = b"\xff" * 28
    path.write_bytes(bytes(data))
    got = run(site)
    assert got["served"] is False and got["Y"] == 2


def test_a_damaged_module_entry_is_compiled_from_its_source(site):
    modarchive.write(str(site))
    (site / "istio_cni" / "a.py").write_text("X = 41\n")
    path = site / modarchive.ARCHIVE
    data = path.read_bytes()
    path.write_bytes(data[:-8] + b"\xff" * 8)  # the last module's code (sorted: istio_cni.sub.b)
    got = run(site)
    assert got["served"] is True and got["Y"] == 2  # b from source; a still from the archive (1)
    assert "raise ValueError('boom from b')" in got["tb"]


def test_the_archive_holds_every_plugin_module(tmp_path):
    # What the bundle builder writes for the real package: every .py, names as Python sees them.
    src = Path(modarchive.__file__).parent
    site = tmp_path / "site"
    shutil.copytree(src, site / "istio_cni", ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.c", "*.pyx"))
    n = modarchive.write(str(site))
    assert n == len(list((site / "istio_cni").rglob("*.py")))


# ---- bad bytes: a damaged header or index is refused or served, bounded, serve() never raises ----

FUZZ_PROBE = """
import resource, sys, time
resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))  # a damaged size must not become a 1 GB read
site = sys.argv[1]
sys.path.insert(0, site)
from istio_cni._modarchive import serve
t = time.monotonic()
served = serve(site)  # never raises, whatever the bytes
try:  # an index entry moved onto another module's code runs that code, as a swapped .pyc would
    import istio_cni.sub.b as b
    y = b.Y
except Exception as e:
    y = type(e).__name__
print(served, y, round(time.monotonic() - t, 3))
"""


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_damaged_header_or_index_bytes_are_refused_or_served(tmp_path_factory, data):
    root = tmp_path_factory.mktemp("fuzzsite")
    for rel, text in FILES.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    shutil.copy(modarchive.__file__, root / "istio_cni" / "_modarchive.py")
    modarchive.write(str(root))
    path = root / modarchive.ARCHIVE
    blob = bytearray(path.read_bytes())
    start = len(modarchive.HEADER) + 4  # the size field and the index after it (code blobs: .pyc trust)
    index_end = start + 8 + int.from_bytes(blob[start:start + 8], "little")
    for _ in range(data.draw(st.integers(1, 6))):
        i = data.draw(st.integers(start, index_end - 1))
        blob[i] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        blob = blob[:data.draw(st.integers(0, len(blob)))]
    path.write_bytes(bytes(blob))
    r = subprocess.run([sys.executable, "-I", "-S", "-c", FUZZ_PROBE, str(root)], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr[-1500:]
    served, y, seconds = r.stdout.split()
    assert served in ("True", "False") and float(seconds) < 5
    assert y == "2" or served == "True"  # refused: the normal finders serve it all


def test_an_index_entry_pointing_past_the_file_is_left_to_the_normal_finders(site):
    # Rewrite the index (same length: only an int changes) so sub.b's size runs past the file.
    import marshal

    modarchive.write(str(site))
    path = site / modarchive.ARCHIVE
    blob = path.read_bytes()
    start = len(modarchive.HEADER) + 4
    size = int.from_bytes(blob[start:start + 8], "little")
    index = marshal.loads(blob[start + 8:start + 8 + size])
    is_package, offset, length, deps = index["istio_cni.sub.b"]
    index["istio_cni.sub.b"] = (is_package, offset, (1 << 40) + length, deps)
    new = marshal.dumps(index)
    path.write_bytes(blob[:start] + len(new).to_bytes(8, "little") + new + blob[start + 8 + size:])
    got = run(site)
    assert got["served"] is True and got["Y"] == 2
    assert got["loader"] == "SourceFileLoader"  # that module from disk; the others from the archive
