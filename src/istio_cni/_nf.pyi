"""Type stub for the cffi extension ``istio_cni._nf`` (built from ``_nf.cffi.py``).

cffi creates ``ffi`` and ``lib`` at build time: ``lib`` carries the C functions, constants and
the compiled rule encoder declared in ``_nf.cffi.py`` (libiptc, libip6tc, ``_nf_xtenc.c``;
libnftables is ``_nft``), ``ffi`` is the cffi handle for them. cffi exposes those members dynamically
and ships no typing for them, so both are ``Any``; the declarations in ``_nf.cffi.py`` are the
reference.
"""

from typing import Any

ffi: Any
lib: Any
