"""cffi build script (API mode, out-of-line) for ``istio_cni._nf``.

Binds libip4tc / libip6tc (legacy x_tables, what ``iptables-legacy`` uses) and
libnftables (what ``nft`` uses). API mode lets the C compiler check every struct
layout against the system headers, which is where x_tables bindings usually go wrong
(alignment, 40-byte standard target, host vs network byte order).

Laid out like pyca/cryptography's ``_cffi_src``: INCLUDES / TYPES / FUNCTIONS, then one
``set_source``. Built by ``setup.py`` through ``cffi_modules``; run directly to build in place.
"""

from cffi import FFI

INCLUDES = r"""
#include <libiptc/libiptc.h>
#include <libiptc/libip6tc.h>
#include <nftables/libnftables.h>
"""

TYPES = r"""
typedef char xt_chainlabel[32];
struct xtc_handle;
struct xt_counters { uint64_t pcnt; uint64_t bcnt; ...; };
struct ipt_entry { unsigned int nfcache; uint16_t target_offset; uint16_t next_offset; ...; };
struct ip6t_entry { unsigned int nfcache; uint16_t target_offset; uint16_t next_offset; ...; };

struct nft_ctx;
#define NFT_CTX_DEFAULT ...
"""

FUNCTIONS = r"""
/* libip4tc */
struct xtc_handle *iptc_init(const char *tablename);
void iptc_free(struct xtc_handle *h);
int iptc_is_chain(const char *chain, struct xtc_handle *const handle);
const char *iptc_first_chain(struct xtc_handle *handle);
const char *iptc_next_chain(struct xtc_handle *handle);
const struct ipt_entry *iptc_first_rule(const char *chain, struct xtc_handle *handle);
const struct ipt_entry *iptc_next_rule(const struct ipt_entry *prev, struct xtc_handle *handle);
const char *iptc_get_target(const struct ipt_entry *e, struct xtc_handle *handle);
int iptc_builtin(const char *chain, struct xtc_handle *const handle);
int iptc_create_chain(const xt_chainlabel chain, struct xtc_handle *handle);
int iptc_flush_entries(const xt_chainlabel chain, struct xtc_handle *handle);
int iptc_delete_chain(const xt_chainlabel chain, struct xtc_handle *handle);
int iptc_append_entry(const xt_chainlabel chain, const struct ipt_entry *e, struct xtc_handle *handle);
int iptc_insert_entry(const xt_chainlabel chain, const struct ipt_entry *e, unsigned int rulenum, struct xtc_handle *handle);
int iptc_delete_num_entry(const xt_chainlabel chain, unsigned int rulenum, struct xtc_handle *handle);
int iptc_commit(struct xtc_handle *handle);
const char *iptc_strerror(int err);

/* libip6tc */
struct xtc_handle *ip6tc_init(const char *tablename);
void ip6tc_free(struct xtc_handle *h);
int ip6tc_is_chain(const char *chain, struct xtc_handle *const handle);
const char *ip6tc_first_chain(struct xtc_handle *handle);
const char *ip6tc_next_chain(struct xtc_handle *handle);
const struct ip6t_entry *ip6tc_first_rule(const char *chain, struct xtc_handle *handle);
const struct ip6t_entry *ip6tc_next_rule(const struct ip6t_entry *prev, struct xtc_handle *handle);
const char *ip6tc_get_target(const struct ip6t_entry *e, struct xtc_handle *handle);
int ip6tc_builtin(const char *chain, struct xtc_handle *const handle);
int ip6tc_create_chain(const xt_chainlabel chain, struct xtc_handle *handle);
int ip6tc_flush_entries(const xt_chainlabel chain, struct xtc_handle *handle);
int ip6tc_delete_chain(const xt_chainlabel chain, struct xtc_handle *handle);
int ip6tc_append_entry(const xt_chainlabel chain, const struct ip6t_entry *e, struct xtc_handle *handle);
int ip6tc_insert_entry(const xt_chainlabel chain, const struct ip6t_entry *e, unsigned int rulenum, struct xtc_handle *handle);
int ip6tc_delete_num_entry(const xt_chainlabel chain, unsigned int rulenum, struct xtc_handle *handle);
int ip6tc_commit(struct xtc_handle *handle);
const char *ip6tc_strerror(int err);

/* libnftables */
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
ffibuilder.set_source(
    "istio_cni._nf",
    INCLUDES,
    libraries=["ip4tc", "ip6tc", "nftables"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
