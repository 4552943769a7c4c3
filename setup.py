"""Extension and package-layout configuration; metadata lives in pyproject.toml.

The compiled modules are mandatory: a build that cannot compile ``_fastpath`` or a
cffi module (``_nf``, ``_nft``) fails, it never falls back to pure Python silently.

Two import packages ship in one distribution: ``istio_cni`` (``src/``, the plugin, kept
lean) and ``istio_cni_installer`` (``installer/``, the node program).
"""

from Cython.Build import cythonize
from setuptools import Extension, find_packages, setup
from setuptools.command.build_py import build_py

INSTALLER = "installer/istio_cni_installer"


class BuildPyWithoutBuildScripts(build_py):
    """``*.cffi.py`` are build scripts (``cffi_modules``), not modules: they stay out of the wheel.
    ``exclude-package-data`` cannot do it (it filters data files; build_py takes every ``*.py``)."""

    def find_package_modules(self, package, package_dir):
        modules = super().find_package_modules(package, package_dir)
        return [m for m in modules if not m[2].endswith(".cffi.py")]


setup(
    cmdclass={"build_py": BuildPyWithoutBuildScripts},
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
