"""Fail unless the installed istio_cni carries its compiled modules (run against a wheel).

Used by tools/wheel-check.sh (``make wheel``) and cibuildwheel's test-command: a wheel whose
build silently lost ``_fastpath`` (Cython), ``_nf`` or ``_nft`` (cffi) must not pass. Also refuses to
run against the source tree, so it always tests what the wheel installed.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import sys
from pathlib import Path

COMPILED = ("istio_cni._fastpath", "istio_cni._nf", "istio_cni._nft")


def main() -> int:
    import istio_cni

    pkg = Path(istio_cni.__file__).resolve().parent
    if "site-packages" not in pkg.parts:
        print(f"check_compiled: istio_cni imported from {pkg}, not from an installed wheel", file=sys.stderr)
        return 1
    problems = []
    for name in COMPILED:
        try:
            mod = importlib.import_module(name)
        except ImportError as e:
            problems.append(f"{name}: cannot import ({e})")
            continue
        origin = getattr(mod, "__file__", "") or ""
        if not origin.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES)):
            problems.append(f"{name}: {origin or 'no file'} is not a compiled extension")
            continue
        print(f"check_compiled: {name} -> {origin}")
    front = pkg / "_front"  # the compiled front (src/front/), copied into the plugin bundle
    try:
        with open(front, "rb") as f:
            if f.read(4) != b"\x7fELF":
                problems.append(f"{front}: not an ELF executable")
        if not front.stat().st_mode & 0o111:
            problems.append(f"{front}: not executable")
    except OSError as e:
        problems.append(f"{front}: {e.strerror}")
    # Exercise each module once, so a module that loads but is broken fails here too.
    if not problems:
        from istio_cni._fastpath import json_dumps, json_loads
        from istio_cni._nf import ffi, lib

        if json_loads(json_dumps({"k": [1, "x"]})) != {"k": [1, "x"]}:
            problems.append("istio_cni._fastpath: JSON round trip is wrong")
        if not ffi.string(lib.iptc_strerror(0)):
            problems.append("istio_cni._nf: iptc_strerror returned nothing")
        from istio_cni import _nft

        if _nft.lib.NFT_CTX_DEFAULT != 0:  # the libnftables header's value
            problems.append(f"istio_cni._nft: NFT_CTX_DEFAULT is {_nft.lib.NFT_CTX_DEFAULT}")
    for p in problems:
        print(f"check_compiled: {p}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
