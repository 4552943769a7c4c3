"""Extension and package-layout configuration; metadata lives in pyproject.toml.

The compiled modules are mandatory: a build that cannot compile ``_fastpath`` or a
cffi module (``_nf``, ``_nft``) fails, it never falls back to pure Python silently.

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
    # _nf: libiptc + the rule encoder; _nft: libnftables, loaded only by the nft backend.
    cffi_modules=["src/istio_cni/_nf.cffi.py:ffibuilder", "src/istio_cni/_nft.cffi.py:ffibuilder"],
)
