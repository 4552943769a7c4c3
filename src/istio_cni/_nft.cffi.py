"""cffi build script (API mode, out-of-line) for ``istio_cni._nft``: libnftables.

Separate from ``_nf`` (libiptc) so that only the nft backend (and the node agent's checks)
pay for loading libnftables and its dependencies (libnftnl, libmnl, libjansson, libgmp,
libxtables): a plugin exec committing through libiptc never maps them. The netns'
nf_tables table list, which every auto-selected ADD needs, is read over raw netlink
(``netfilter/nftlist.py``), not through this module.

Laid out like ``_nf.cffi.py`` (pyca/cryptography's ``_cffi_src``): INCLUDES / TYPES /
FUNCTIONS, then one ``set_source``. Built by ``setup.py`` through ``cffi_modules``.
"""

from cffi import FFI

INCLUDES = r"""
#include <nftables/libnftables.h>
"""

TYPES = r"""
struct nft_ctx;
#define NFT_CTX_DEFAULT ...
"""

FUNCTIONS = r"""
struct nft_ctx *nft_ctx_new(uint32_t flags);
void nft_ctx_free(struct nft_ctx *ctx);
int nft_ctx_buffer_output(struct nft_ctx *ctx);
const char *nft_ctx_get_output_buffer(struct nft_ctx *ctx);
int nft_ctx_buffer_error(struct nft_ctx *ctx);
const char *nft_ctx_get_error_buffer(struct nft_ctx *ctx);
unsigned int nft_ctx_output_get_flags(struct nft_ctx *ctx);
void nft_ctx_output_set_flags(struct nft_ctx *ctx, unsigned int flags);
int nft_run_cmd_from_buffer(struct nft_ctx *nft, const char *buf);
"""

ffibuilder = FFI()
ffibuilder.cdef(TYPES + FUNCTIONS)
ffibuilder.set_source("istio_cni._nft", INCLUDES, libraries=["nftables"])

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
