"""Extension and package-layout configuration; metadata lives in pyproject.toml.

Both compiled modules are mandatory: a build that cannot compile ``_fastpath`` or the
cffi module fails, it never falls back to pure Python silently.

Two import packages ship in one distribution: ``istio_cni`` (``src/``, the plugin, kept
lean) and ``istio_cni_installer`` (``installer/``, the node program).
"""

from Cython.Build import cythonize
from setuptools import Extension, find_packages, setup

INSTALLER = "installer/istio_cni_installer"

setup(
    package_dir={"": "src", "istio_cni_installer": INSTALLER},
    packages=find_packages("src")
    + ["istio_cni_installer"]
    + [f"istio_cni_installer.{p}" for p in find_packages(INSTALLER)],
    ext_modules=cythonize(
        [Extension("istio_cni._fastpath", ["src/istio_cni/_fastpath.pyx"])],
        language_level=3,
    ),
    cffi_modules=["src/istio_cni/_nf.cffi.py:ffibuilder"],
)
