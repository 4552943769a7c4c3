"""cffi build script (API mode, out-of-line) for ``istio_cni._nf``.

Binds libip4tc / libip6tc (legacy x_tables, what ``iptables-legacy`` uses) and the compiled
rule encoder. libnftables has its own module (``_nft.cffi.py`` -> ``istio_cni._nft``): a
plain libiptc commit, the default for a fresh pod netns, then never loads it (loading
libnftables and its libraries costs 0.9-2.9 ms and ~0.9 MiB of RSS per plugin exec,
benchmarks/RESULTS.md). API mode lets the C compiler check every struct
layout against the system headers, which is where x_tables bindings usually go wrong
(alignment, 40-byte standard target, host vs network byte order).

Laid out like pyca/cryptography's ``_cffi_src``: INCLUDES / TYPES / FUNCTIONS, then one
``set_source``. Built by ``setup.py`` through ``cffi_modules``; run directly to build in place.
"""

import os

from cffi import FFI

# The compiled rule encoder (a fast path of netfilter/xt.py + xtenc.py), kept in its own C
# file and compiled into this module after the netfilter headers above.
with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "_nf_xtenc.c")) as f:
    XTENC = f.read()

INCLUDES = r"""
#include <libiptc/libiptc.h>
#include <libiptc/libip6tc.h>
#include <linux/netfilter/xt_tcpudp.h>
#include <linux/netfilter/xt_owner.h>
#include <linux/netfilter/xt_multiport.h>
#include <linux/netfilter/xt_conntrack.h>
#include <linux/netfilter/xt_mark.h>
#include <linux/netfilter/xt_connmark.h>
#include <linux/netfilter/xt_socket.h>
#include <linux/netfilter/xt_TPROXY.h>
#include <linux/netfilter/xt_CT.h>
#include <linux/netfilter/nf_nat.h>
"""

TYPES = r"""
typedef char xt_chainlabel[32];
struct xtc_handle;
struct xt_counters { uint64_t pcnt; uint64_t bcnt; ...; };
struct ipt_entry { unsigned int nfcache; uint16_t target_offset; uint16_t next_offset; ...; };
struct ip6t_entry { unsigned int nfcache; uint16_t target_offset; uint16_t next_offset; ...; };

/* Match and target payloads (x_tables ABI). Declared partially so the compiler fixes
   every offset and size from the system headers; netfilter/xt.py fills them field by
   field. Ports in xt_tcp/xt_udp/xt_multiport are host order, NAT/TPROXY ports network. */
struct xt_entry_match { ...; };
struct xt_entry_target { ...; };
struct xt_standard_target { ...; };
struct ipt_ip { ...; };
struct ip6t_ip6 { ...; };
struct xt_tcp { uint16_t spts[2]; uint16_t dpts[2]; uint8_t option; uint8_t flg_mask;
                uint8_t flg_cmp; uint8_t invflags; ...; };
struct xt_udp { uint16_t spts[2]; uint16_t dpts[2]; uint8_t invflags; ...; };
struct xt_owner_match_info { uint32_t uid_min; uint32_t uid_max; uint32_t gid_min;
                             uint32_t gid_max; uint8_t match; uint8_t invert; ...; };
struct xt_multiport_v1 { uint8_t flags; uint8_t count; uint16_t ports[15]; uint8_t pflags[15];
                         uint8_t invert; ...; };
struct xt_conntrack_mtinfo3 { uint16_t match_flags; uint16_t invert_flags; uint16_t state_mask;
                              ...; };
struct xt_mark_mtinfo1 { uint32_t mark; uint32_t mask; uint8_t invert; ...; };
struct xt_mark_tginfo2 { uint32_t mark; uint32_t mask; ...; };
struct xt_connmark_mtinfo1 { uint32_t mark; uint32_t mask; uint8_t invert; ...; };
struct xt_connmark_tginfo2 { uint32_t ctmark; uint32_t ctmask; uint32_t nfmask; uint8_t shift_dir;
                             uint8_t shift_bits; uint8_t mode; ...; };
struct xt_socket_mtinfo3 { uint8_t flags; ...; };
struct xt_tproxy_target_info_v1 { uint32_t mark_mask; uint32_t mark_value; uint16_t lport; ...; };
struct xt_ct_target_info_v1 { uint16_t flags; uint16_t zone; ...; };
struct nf_nat_ipv4_range { unsigned int flags; ...; };
struct nf_nat_ipv4_multi_range_compat { unsigned int rangesize; struct nf_nat_ipv4_range range[1]; ...; };
struct nf_nat_range { unsigned int flags; ...; };

#define XT_CONNTRACK_STATE ...
#define XT_CONNTRACK_STATE_INVALID ...
#define XT_CONNTRACK_STATE_UNTRACKED ...
#define XT_CONNTRACK_STATE_SNAT ...
#define XT_CONNTRACK_STATE_DNAT ...
#define NF_NAT_RANGE_PROTO_SPECIFIED ...
#define XT_CONNMARK_SAVE ...
#define XT_CONNMARK_RESTORE ...
#define XT_CONNMARK_SET ...
#define XT_OWNER_UID ...
#define XT_OWNER_GID ...
#define XT_MULTIPORT_SOURCE ...
#define XT_MULTIPORT_DESTINATION ...
#define XT_TCP_INV_SRCPT ...
#define XT_TCP_INV_DSTPT ...
#define XT_UDP_INV_SRCPT ...
#define XT_UDP_INV_DSTPT ...
#define IPT_INV_VIA_IN ...
#define IPT_INV_VIA_OUT ...
#define IPT_INV_SRCIP ...
#define IPT_INV_DSTIP ...
#define IPT_INV_PROTO ...
#define IP6T_F_PROTO ...
#define IP6T_INV_PROTO ...

/* Offsets the encoder needs that cffi cannot express as fields (unions, arrays of
   unions, kernel-private tails). */
static const int NF_OFF_TPROXY_LPORT;
static const int NF_OFF_TPROXY_LADDR;
static const int NF_OFF_NAT4_MIN_PROTO;
static const int NF_OFF_NAT4_MAX_PROTO;
static const int NF_OFF_NAT_MIN_PROTO;
static const int NF_OFF_NAT_MAX_PROTO;
static const int NF_OFF_IPT_IP_PROTO;
static const int NF_OFF_IP6T_IP6_PROTO;
static const int NF_SIZEOF_IPT_ENTRY;
static const int NF_SIZEOF_IP6T_ENTRY;
static const int NF_SIZEOF_IPT_IP;
static const int NF_SIZEOF_IP6T_IP6;
static const int NF_OFF_IPT_ENTRY_TARGET_OFFSET;
static const int NF_OFF_IP6T_ENTRY_TARGET_OFFSET;
"""

OFFSETS = r"""
#include <stddef.h>
static const int NF_OFF_TPROXY_LPORT = offsetof(struct xt_tproxy_target_info_v1, lport);
static const int NF_OFF_TPROXY_LADDR = offsetof(struct xt_tproxy_target_info_v1, laddr);
static const int NF_OFF_NAT4_MIN_PROTO = offsetof(struct nf_nat_ipv4_multi_range_compat, range[0].min);
static const int NF_OFF_NAT4_MAX_PROTO = offsetof(struct nf_nat_ipv4_multi_range_compat, range[0].max);
static const int NF_OFF_NAT_MIN_PROTO = offsetof(struct nf_nat_range, min_proto);
static const int NF_OFF_NAT_MAX_PROTO = offsetof(struct nf_nat_range, max_proto);
static const int NF_OFF_IPT_IP_PROTO = offsetof(struct ipt_ip, proto);
static const int NF_OFF_IP6T_IP6_PROTO = offsetof(struct ip6t_ip6, proto);
static const int NF_SIZEOF_IPT_ENTRY = sizeof(struct ipt_entry);
static const int NF_SIZEOF_IP6T_ENTRY = sizeof(struct ip6t_entry);
static const int NF_SIZEOF_IPT_IP = sizeof(struct ipt_ip);
static const int NF_SIZEOF_IP6T_IP6 = sizeof(struct ip6t_ip6);
static const int NF_OFF_IPT_ENTRY_TARGET_OFFSET = offsetof(struct ipt_entry, target_offset);
static const int NF_OFF_IP6T_ENTRY_TARGET_OFFSET = offsetof(struct ip6t_entry, target_offset);
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

/* _nf_xtenc.c: rules' NUL-separated tokens -> entry bytes (sizes[i] 0: use the Python path) */
int nf_xt_encode(int family, const char *toks, size_t len, const int *ntoks, int nrules,
                 unsigned char *out, size_t outsize, int *sizes);
"""  # noqa: E501  (C prototypes one per line, as in the library headers)

ffibuilder = FFI()
ffibuilder.cdef(TYPES + FUNCTIONS)
ffibuilder.set_source(
    "istio_cni._nf",
    INCLUDES + OFFSETS + XTENC,
    libraries=["ip4tc", "ip6tc"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
