"""Type stub for the cffi extension ``istio_cni._nft`` (built from ``_nft.cffi.py``).

cffi creates ``ffi`` and ``lib`` at build time: ``lib`` carries the libnftables functions and
constants declared in ``_nft.cffi.py``, ``ffi`` is the cffi handle for them. cffi exposes those
members dynamically and ships no typing for them, so both are ``Any``; the declarations in
``_nft.cffi.py`` are the reference.
"""

from typing import Any

ffi: Any
lib: Any
