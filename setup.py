"""Extension and package-layout configuration; metadata lives in pyproject.toml.

The compiled modules are mandatory: a build that cannot compile ``_fastpath`` or a
cffi module (``_nf``, ``_nft``) fails, it never falls back to pure Python silently.

The front (``src/front/``, C) is an executable, not a module: kubelet execs it as
``<bin>/istio-cni``. ``build_ext`` compiles it with the extensions' compiler (so a cross build
cross-compiles it) into the ``istio_cni`` package as ``_front``; the bundle carries it.

Two import packages ship in one distribution: ``istio_cni`` (``src/``, the plugin, kept
lean) and ``istio_cni_installer`` (``installer/``, the node program).
"""

import os

from Cython.Build import cythonize
from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext
from setuptools.command.build_py import build_py

INSTALLER = "installer/istio_cni_installer"
FRONT_SOURCES = ["src/front/front.c", "src/front/json.c", "src/front/agent.c", "src/front/prefetch.c"]
FRONT_FLAGS = ["-O2", "-Wall", "-Wextra", "-D_FORTIFY_SOURCE=2", "-fstack-protector-strong"]


class BuildExtAndFront(build_ext):
    """The extensions, then the front: a plain executable built by the same compiler."""

    def run(self):
        super().run()
        if self.inplace:
            out_dir = self.get_finalized_command("build_py").get_package_dir("istio_cni")
        else:
            out_dir = os.path.join(self.build_lib, "istio_cni")
        objects = self.compiler.compile(FRONT_SOURCES, output_dir=self.build_temp, extra_postargs=FRONT_FLAGS)
        self.compiler.link_executable(objects, "_front", output_dir=out_dir)


class BuildPyWithoutBuildScripts(build_py):
    """``*.cffi.py`` are build scripts (``cffi_modules``), not modules: they stay out of the wheel.
    ``exclude-package-data`` cannot do it (it filters data files; build_py takes every ``*.py``)."""

    def find_package_modules(self, package, package_dir):
        modules = super().find_package_modules(package, package_dir)
        return [m for m in modules if not m[2].endswith(".cffi.py")]


setup(
    cmdclass={"build_ext": BuildExtAndFront, "build_py": BuildPyWithoutBuildScripts},
    package_dir={"": "src", "istio_cni_installer": INSTALLER},
    packages=find_packages("src")
    + ["istio_cni_installer"]
    + [f"istio_cni_installer.{p}" for p in find_packages(INSTALLER)],
    ext_modules=cythonize(
        [Extension("istio_cni._fastpath", ["src/istio_cni/_fastpath.pyx"])],
        language_level=3,
    ),
    # _nf: libiptc + the rule encoder; _nft: libnftables, loaded only by the nft backend.
    cffi_modules=["src/istio_cni/_nf.cffi.py:ffibuilder", "src/istio_cni/_nft.cffi.py:ffibuilder"],
)
