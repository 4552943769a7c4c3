"""installer/Dockerfile: what can be checked without a container engine.

The image cannot be built here, so these tests check its recipe against the project: every COPY
source exists and survives the build-context filter, the entrypoint is the install-cni console
script the chart runs, the bundle it builds is where the installer looks for it, and the final
stage has the runtime libraries of the compiled modules but no compiler.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
from support.chartlib import CHART

from istio_cni_installer import settings as installer_settings

REPO = CHART.parents[1]
DOCKERFILE = REPO / "installer" / "Dockerfile"
IGNORE = REPO / "installer" / "Dockerfile.dockerignore"
BUILD_ONLY = ("build-essential", "gcc", "g++", "pkg-config", "binutils")


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    out, buf = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        if not buf and (not line.strip() or line.lstrip().startswith("#")):
            continue
        buf += line.rstrip("\\").rstrip() + " " if line.endswith("\\") else line
        if not line.endswith("\\"):
            word, _, rest = buf.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
            buf = ""
    return out


def stages() -> dict[str, list[tuple[str, str]]]:
    result, current = {}, None
    for word, rest in instructions():
        if word == "FROM":
            current = rest.split()[-1] if " AS " in rest.upper() else rest
            result[current] = []
        elif current is not None:
            result[current].append((word, rest))
    return result


def apt_packages(stage: list[tuple[str, str]]) -> set[str]:
    pkgs = set()
    for word, rest in stage:
        if word == "RUN" and "apt-get install" in rest:
            for cmd in rest.split("&&"):
                if "apt-get install" in cmd:
                    pkgs |= {t for t in shlex.split(cmd)[2:] if not t.startswith("-") and t != "install"}
    return pkgs


def env_of(stage: list[tuple[str, str]]) -> dict[str, str]:
    env = {}
    for word, rest in stage:
        if word == "ENV":
            for tok in shlex.split(rest):
                k, _, v = tok.partition("=")
                env[k] = v
    return env


def ignored(rel: str, patterns: list[str]) -> bool:
    """Docker's context filter: the last matching pattern decides; `!` re-includes."""
    excluded = False
    for pat in patterns:
        neg = pat.startswith("!")
        p = pat[1:] if neg else pat
        p = p.rstrip("/")
        names = [rel] + [rel[:i] for i in range(len(rel)) if rel[i] == "/"]
        hit = any(fnmatch.fnmatch(n, p) or fnmatch.fnmatch(n, p.replace("**/", "")) for n in names)
        if p.startswith("**/"):
            hit = hit or any(fnmatch.fnmatch(part, p[3:]) for part in rel.split("/"))
        if hit:
            excluded = not neg
    return excluded


def ignore_patterns() -> list[str]:
    return [line.strip() for line in IGNORE.read_text().splitlines() if line.strip() and not line.startswith("#")]


def copy_sources() -> list[str]:
    srcs = []
    for stage in stages().values():
        for word, rest in stage:
            if word == "COPY" and "--from=" not in rest:
                args = [a for a in shlex.split(rest) if not a.startswith("--")]
                srcs += args[:-1]
    return srcs


def test_dockerfile_is_multi_stage_with_a_build_and_a_node_stage():
    assert list(stages()) == ["build", "node"]
    assert any(w == "COPY" and "--from=build" in r for w, r in stages()["node"])


def test_every_copy_source_exists_and_is_in_the_build_context():
    patterns = ignore_patterns()
    for src in copy_sources():
        path = REPO / src
        assert path.exists(), f"COPY source {src} does not exist"
        files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
        sent = [f for f in files if not ignored(str(f.relative_to(REPO)), patterns)]
        assert sent, f"COPY source {src}: every file is filtered out by {IGNORE.name}"


def test_build_context_keeps_sources_and_drops_host_build_products():
    patterns = ignore_patterns()
    for needed in ("pyproject.toml", "setup.py", "README.md", "src/istio_cni/_fastpath.pyx",
                   "src/istio_cni/_nf.cffi.py", "src/istio_cni/_nft.cffi.py",
                   "installer/istio_cni_installer/bundle.py",
                   "installer/istio_cni_installer/__main__.py"):
        assert (REPO / needed).exists(), needed
        assert not ignored(needed, patterns), f"{needed} would not reach the build"
    for product in ("src/istio_cni/_nf.abi3.so", "src/istio_cni/_fastpath.c", ".venv/bin/python",
                    "tests/conftest.py", "charts/istio-cni/values.yaml",
                    "installer/istio_cni_installer/__pycache__/settings.cpython-311.pyc"):
        assert ignored(product, patterns), f"{product} would be sent to the build"


def test_pyproject_files_the_build_reads_are_copied():
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    copied = set(copy_sources())
    assert meta["readme"] in copied  # setuptools refuses to build without it
    for line in (REPO / "MANIFEST.in").read_text().splitlines():
        if line.startswith("include "):
            f = line.split()[1]
            assert f in copied or any(f.startswith(c) for c in copied if c.endswith("/")), f


def test_entrypoint_is_the_install_cni_console_script_the_chart_runs(default_manifests):
    node = stages()["node"]
    entry = [r for w, r in node if w == "ENTRYPOINT"]
    assert len(entry) == 1
    argv = json.loads(entry[0])  # exec form is a JSON array
    script = Path(argv[0])
    assert script.name == "install-cni"
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["install-cni"] == "istio_cni_installer.__main__:main"
    build = " ".join(r for w, r in stages()["build"] if w == "RUN")
    venv = script.parent.parent
    assert f"python -m venv {venv}" in build
    # The chart calls it by name: the image PATH must find it there.
    assert default_manifests.container["command"] == ["install-cni"]
    assert str(script.parent) in env_of(node)["PATH"].split(":")


def test_bundle_is_built_where_the_installer_looks_for_it():
    build = " ".join(r for w, r in stages()["build"] if w == "RUN")
    m = re.search(r"-m istio_cni_installer\.bundle --output (\S+)", build)
    assert m, "the build stage does not build the plugin bundle"
    env = env_of(stages()["node"])
    assert env["PLUGIN_BUNDLE_DIR"] == m.group(1)
    assert "PLUGIN_BUNDLE_DIR" in {n for spec in installer_settings.SPECS for n in spec[2]}
    parsed = installer_settings.parse([], env={"PLUGIN_BUNDLE_DIR": env["PLUGIN_BUNDLE_DIR"]})
    assert parsed.plugin_bundle_dir == m.group(1)
    # and the bundle builder takes that flag
    out = subprocess.run([sys.executable, "-m", "istio_cni_installer.bundle", "--help"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "--output" in out.stdout, out.stderr


def test_node_stage_has_no_compiler_and_runs_unprivileged_by_default():
    node = stages()["node"]
    pkgs = apt_packages(node)
    assert not {p for p in pkgs if p in BUILD_ONLY or p.endswith("-dev")}, pkgs
    assert any(w == "USER" and not r.startswith(("0", "root")) for w, r in node)
    assert apt_packages(stages()["build"]) >= {"build-essential", "libiptc-dev", "libnftables-dev"}


def _needed_libraries(so: Path) -> list[str]:
    out = subprocess.run(["readelf", "-d", str(so)], capture_output=True, text=True, timeout=30, check=True)
    return re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", out.stdout)


def _debian_package_of(soname: str) -> str:
    out = subprocess.run(["dpkg", "-S", f"*/{soname}"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, f"no Debian package ships {soname}: {out.stderr}"
    return out.stdout.split(":")[0]


@pytest.mark.parametrize("module", ["istio_cni._nf", "istio_cni._nft", "istio_cni._fastpath"])
def test_node_stage_installs_the_runtime_libraries_of_the_compiled_modules(module):
    import importlib

    so = Path(importlib.import_module(module).__file__)
    pkgs = apt_packages(stages()["node"])
    for soname in _needed_libraries(so):
        if soname.startswith(("libc.so", "libpython", "libm.so", "libpthread")):
            continue  # from the python base image itself
        assert _debian_package_of(soname) in pkgs, f"{module} needs {soname}; not installed in the node stage"
