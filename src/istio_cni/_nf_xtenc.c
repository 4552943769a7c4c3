/* Compiled fast path of netfilter/xt.py + netfilter/xtenc.py for the common rule shapes.
 *
 * nf_xt_encode() turns rules' tokens (upstream istio-iptables spelling, NUL-separated, all
 * rules in one buffer so a table costs one call) into the ipt_entry / ip6t_entry bytes
 * xtenc.encode(xt.parse(spec)) produces, for the
 * subset the default rule sets are made of: -s/-d/-i/-o/-p and "!", the tcp/udp (explicit
 * or implicit) and owner matches, standard targets (verdicts, jumps) and REDIRECT.
 *
 * It never reports an error: anything outside that subset, and anything the Python parser
 * would reject (bad numbers, unknown names, missing values), returns 0 and the caller takes
 * the Python path, which gives the same bytes or the same XtParseError as before. So the
 * rules below follow xt.py token for token where they accept, and refuse where in doubt.
 *
 * Included into the cffi module's source by _nf.cffi.py (after the netfilter headers).
 */
#include <string.h>
#include <arpa/inet.h>
#include <netinet/in.h>

#define NFX_MAX_MATCHES 8
#define NFX_EXT_HEADER 32

enum { NFX_M_TCP, NFX_M_UDP, NFX_M_OWNER };

struct nfx_match {
    int kind;
    /* tcp/udp */
    uint16_t spts[2], dpts[2];
    uint8_t tinv;
    /* owner */
    uint32_t uid[2], gid[2];
    uint8_t omatch, oinv;
};

struct nfx_addr { int set, neg, plen; unsigned char raw[16]; };
struct nfx_iface { int set, neg; const char *name; size_t len; };

static size_t nfx_align(size_t n) { return (n + 7) & ~(size_t)7; }

/* xt.py's _num is int(tok, 0): plain decimal without a leading zero is the safe subset. */
static int nfx_dec(const char *s, uint32_t max, uint32_t *out)
{
    uint64_t v = 0;
    size_t n = strlen(s);
    if (n == 0 || n > 10 || (n > 1 && s[0] == '0'))
        return 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return 0;
        v = v * 10 + (uint64_t)(s[i] - '0');
    }
    if (v > max)
        return 0;
    *out = (uint32_t)v;
    return 1;
}

/* str.isdigit() + int(): leading zeros allowed (xt._id), ASCII digits only here. */
static int nfx_digits(const char *s, size_t n, uint32_t *out)
{
    uint64_t v = 0;
    if (n == 0 || n > 10)
        return 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return 0;
        v = v * 10 + (uint64_t)(s[i] - '0');
    }
    if (v > 0xFFFFFFFFu)
        return 0;
    *out = (uint32_t)v;
    return 1;
}

/* xt._port_range restricted to "p" and "a:b" (both decimal). */
static int nfx_port_range(const char *tok, uint16_t out[2])
{
    char buf[16];
    const char *colon = strchr(tok, ':');
    uint32_t a, b;
    if (!colon) {
        if (!nfx_dec(tok, 0xFFFF, &a))
            return 0;
        out[0] = out[1] = (uint16_t)a;
        return 1;
    }
    if ((size_t)(colon - tok) >= sizeof(buf))
        return 0;
    memcpy(buf, tok, (size_t)(colon - tok));
    buf[colon - tok] = 0;
    if (!nfx_dec(buf, 0xFFFF, &a) || !nfx_dec(colon + 1, 0xFFFF, &b) || a > b)
        return 0;
    out[0] = (uint16_t)a;
    out[1] = (uint16_t)b;
    return 1;
}

/* xt._id: "n" or "a-b" (digits); user and group names are left to Python. */
static int nfx_id(const char *tok, uint32_t out[2])
{
    const char *dash = strchr(tok, '-');
    if (dash) {
        if (!nfx_digits(tok, (size_t)(dash - tok), &out[0]) ||
            !nfx_digits(dash + 1, strlen(dash + 1), &out[1]))
            return 0;
        return 1;
    }
    if (!nfx_digits(tok, strlen(tok), &out[0]))
        return 0;
    out[1] = out[0];
    return 1;
}

/* xt._cidr: inet_pton (what Python's socket.inet_pton calls), prefix by _num, masked. */
static int nfx_cidr(const char *tok, int family, struct nfx_addr *a, int neg)
{
    char buf[64];
    const char *slash = strchr(tok, '/');
    size_t alen = slash ? (size_t)(slash - tok) : strlen(tok);
    int bytes = family == 4 ? 4 : 16;
    uint32_t plen = (uint32_t)bytes * 8;
    if (alen >= sizeof(buf))
        return 0;
    memcpy(buf, tok, alen);
    buf[alen] = 0;
    memset(a->raw, 0, sizeof(a->raw));
    if (inet_pton(family == 4 ? AF_INET : AF_INET6, buf, a->raw) != 1)
        return 0;
    if (slash && !nfx_dec(slash + 1, (uint32_t)bytes * 8, &plen))
        return 0;
    for (int i = 0; i < bytes; i++) {
        int bits = (int)plen - i * 8;
        unsigned char m = bits >= 8 ? 0xFF : bits <= 0 ? 0 : (unsigned char)(0xFF << (8 - bits));
        a->raw[i] &= m;
    }
    a->set = 1;
    a->neg = neg;
    a->plen = (int)plen;
    return 1;
}

static void nfx_mask(unsigned char *out, int bytes, int plen)
{
    for (int i = 0; i < bytes; i++) {
        int bits = plen - i * 8;
        out[i] = bits >= 8 ? 0xFF : bits <= 0 ? 0 : (unsigned char)(0xFF << (8 - bits));
    }
}

static int nfx_ascii(const char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s >= 0x80)
            return 0;
    return 1;
}

/* xtenc._iface_bytes */
static void nfx_iface(const struct nfx_iface *f, char name[16], unsigned char mask[16])
{
    if (!f->set)
        return;
    memcpy(name, f->name, f->len);
    if (f->name[f->len - 1] == '+')
        memset(mask, 0xFF, f->len - 1);
    else
        memset(mask, 0xFF, f->len + 1);
}

/* xtenc._ext: 32-byte header + payload padded to 8. Returns bytes written or 0. */
static size_t nfx_ext(unsigned char *out, size_t room, const char *name, uint8_t revision,
                      const void *payload, size_t plen)
{
    size_t size = NFX_EXT_HEADER + nfx_align(plen);
    uint16_t size16 = (uint16_t)size;
    if (size > room || strlen(name) > 28)
        return 0;
    memset(out, 0, size);
    memcpy(out, &size16, 2);
    memcpy(out + 2, name, strlen(name));
    out[31] = revision;
    memcpy(out + NFX_EXT_HEADER, payload, plen);
    return size;
}

static int nfx_is_option_value_free(const char *tok)
{
    /* xt.FLAG_OPTIONS: all outside the subset. */
    static const char *const flags[] = {"--transparent", "--nowildcard", "--restore-skmark",
                                        "--save-mark", "--restore-mark", "--notrack", NULL};
    for (int i = 0; flags[i]; i++)
        if (!strcmp(tok, flags[i]))
            return 1;
    return 0;
}

static int nfx_proto_number(const char *name, int *out)
{
    static const struct { const char *name; int num; } protos[] = {
        {"tcp", 6}, {"udp", 17}, {"icmp", 1}, {"icmpv6", 58}, {"sctp", 132}, {"all", 0}};
    for (size_t i = 0; i < sizeof(protos) / sizeof(protos[0]); i++)
        if (!strcmp(name, protos[i].name)) {
            *out = protos[i].num;
            return 1;
        }
    return 0;
}

static int nfx_is_port_option(const char *tok, int *is_src)
{
    if (!strcmp(tok, "--dport") || !strcmp(tok, "--destination-port")) {
        *is_src = 0;
        return 1;
    }
    if (!strcmp(tok, "--sport") || !strcmp(tok, "--source-port")) {
        *is_src = 1;
        return 1;
    }
    return 0;
}

static struct nfx_match *nfx_new_match(struct nfx_match *ms, int *n, int kind)
{
    struct nfx_match *m;
    if (*n >= NFX_MAX_MATCHES)
        return NULL;
    m = &ms[(*n)++];
    memset(m, 0, sizeof(*m));
    m->kind = kind;
    m->spts[1] = m->dpts[1] = 0xFFFF;
    return m;
}

static void nfx_set_port(struct nfx_match *m, int is_src, const uint16_t r[2], int neg)
{
    uint16_t *dst = is_src ? m->spts : m->dpts;
    uint8_t bit = is_src ? XT_TCP_INV_SRCPT : XT_TCP_INV_DSTPT;
    dst[0] = r[0];
    dst[1] = r[1];
    m->tinv = (uint8_t)(neg ? (m->tinv | bit) : (m->tinv & ~bit));
}

static int nfx_encode_one(int family, const char *toks, size_t len, int ntoks,
                          unsigned char *out, size_t outsize)
{
    const char *tok[64];
    struct nfx_addr src = {0}, dst = {0};
    struct nfx_iface iif = {0}, oif = {0};
    struct nfx_match ms[NFX_MAX_MATCHES];
    int nms = 0, proto_set = 0, proto_neg = 0, proto = 0, tcpudp_proto = -1;
    const char *target = NULL;
    int redirect_ports = 0;
    uint32_t rport[2] = {0, 0};
    size_t entry_size = family == 4 ? sizeof(struct ipt_entry) : sizeof(struct ip6t_entry);
    size_t pos, match_len;

    if ((family != 4 && family != 6) || ntoks <= 0 || ntoks > 64)
        return 0;
    {   /* split "a\0b\0c" (the caller checked there are exactly ntoks - 1 separators) */
        const char *p = toks, *end = toks + len;
        for (int i = 0; i < ntoks; i++) {
            tok[i] = p;
            p += strlen(p) + 1;
            if (p > end + 1)
                return 0;
        }
    }
    for (int i = 0; i < ntoks;) {
        const char *t = tok[i], *val;
        int neg = 0;
        if (!strcmp(t, "!")) {
            neg = 1;
            if (++i >= ntoks)
                return 0;
            t = tok[i];
            if (!strcmp(t, "!"))
                return 0;
        }
        if (nfx_is_option_value_free(t) || i + 1 >= ntoks)
            return 0;
        val = tok[i + 1];
        i += 2;
        if (!nfx_ascii(val))
            return 0;
        if (!strcmp(t, "-s") || !strcmp(t, "--source")) {
            if (!nfx_cidr(val, family, &src, neg))
                return 0;
        } else if (!strcmp(t, "-d") || !strcmp(t, "--destination")) {
            if (!nfx_cidr(val, family, &dst, neg))
                return 0;
        } else if (!strcmp(t, "-i") || !strcmp(t, "--in-interface") ||
                   !strcmp(t, "-o") || !strcmp(t, "--out-interface")) {
            struct nfx_iface *f = (t[1] == 'i' || t[2] == 'i') ? &iif : &oif;
            size_t n = strlen(val);
            if (n == 0 || n > 15)
                return 0;
            f->set = 1;
            f->neg = neg;
            f->name = val;
            f->len = n;
        } else if (!strcmp(t, "-p") || !strcmp(t, "--protocol")) {
            if (!nfx_proto_number(val, &proto))
                return 0;
            proto_set = 1;
            proto_neg = neg;
            tcpudp_proto = !strcmp(val, "tcp") ? NFX_M_TCP : !strcmp(val, "udp") ? NFX_M_UDP : -1;
        } else if (!strcmp(t, "-m") || !strcmp(t, "--match")) {
            int kind = !strcmp(val, "tcp") ? NFX_M_TCP : !strcmp(val, "udp") ? NFX_M_UDP
                     : !strcmp(val, "owner") ? NFX_M_OWNER : -1;
            if (neg || kind < 0 || target || !nfx_new_match(ms, &nms, kind))
                return 0;
        } else if (!strcmp(t, "-j") || !strcmp(t, "--jump")) {
            if (neg || target || val[0] == 0)
                return 0;
            if (strcmp(val, "REDIRECT") && (!strcmp(val, "TPROXY") || !strcmp(val, "MARK") ||
                                            !strcmp(val, "CONNMARK") || !strcmp(val, "CT")))
                return 0;
            target = val;
        } else if (target) {  /* an option of the target: only REDIRECT's are in the subset */
            const char *dash;
            if (strcmp(target, "REDIRECT") ||
                (strcmp(t, "--to-ports") && strcmp(t, "--to-port")))
                return 0;
            dash = strchr(val, '-');
            if (dash) {
                char lo[16];
                if ((size_t)(dash - val) >= sizeof(lo))
                    return 0;
                memcpy(lo, val, (size_t)(dash - val));
                lo[dash - val] = 0;
                if (!nfx_dec(lo, 0xFFFF, &rport[0]) || !nfx_dec(dash + 1, 0xFFFF, &rport[1]))
                    return 0;
            } else {
                if (!nfx_dec(val, 0xFFFF, &rport[0]))
                    return 0;
                rport[1] = rport[0];
            }
            redirect_ports = 1;
        } else {  /* an option of a match (xt._match_option) */
            int is_src;
            uint16_t r[2];
            struct nfx_match *last = nms ? &ms[nms - 1] : NULL;
            if (!strcmp(t, "--uid-owner") || !strcmp(t, "--gid-owner")) {
                uint32_t id[2];
                uint8_t bit = t[2] == 'u' ? XT_OWNER_UID : XT_OWNER_GID;
                if (!last || last->kind != NFX_M_OWNER || !nfx_id(val, id))
                    return 0;
                if (bit == XT_OWNER_UID)
                    memcpy(last->uid, id, sizeof(id));
                else
                    memcpy(last->gid, id, sizeof(id));
                last->omatch |= bit;
                last->oinv = (uint8_t)(neg ? (last->oinv | bit) : (last->oinv & ~bit));
            } else if (nfx_is_port_option(t, &is_src)) {
                struct nfx_match *m = NULL;
                if (!nfx_port_range(val, r))
                    return 0;
                if (last && last->kind != NFX_M_OWNER) {
                    m = last;
                } else {
                    if (tcpudp_proto < 0)
                        return 0;
                    for (int k = 0; k < nms; k++)
                        if (ms[k].kind == tcpudp_proto) {
                            m = &ms[k];
                            break;
                        }
                    if (!m && !(m = nfx_new_match(ms, &nms, tcpudp_proto)))
                        return 0;
                }
                nfx_set_port(m, is_src, r, neg);
            } else {
                return 0;
            }
        }
    }
    if (!target || (redirect_ports && strcmp(target, "REDIRECT")))
        return 0;

    /* matches, then target, then the entry head in front (xtenc._entry) */
    if (outsize < entry_size)
        return 0;
    memset(out, 0, entry_size);
    pos = entry_size;
    for (int k = 0; k < nms; k++) {
        size_t w;
        if (ms[k].kind == NFX_M_OWNER) {
            struct xt_owner_match_info o;
            memset(&o, 0, sizeof(o));
            o.uid_min = ms[k].uid[0];
            o.uid_max = ms[k].uid[1];
            o.gid_min = ms[k].gid[0];
            o.gid_max = ms[k].gid[1];
            o.match = ms[k].omatch;
            o.invert = ms[k].oinv;
            w = nfx_ext(out + pos, outsize - pos, "owner", 1, &o, sizeof(o));
        } else if (ms[k].kind == NFX_M_TCP) {
            struct xt_tcp p;
            memset(&p, 0, sizeof(p));
            memcpy(p.spts, ms[k].spts, sizeof(p.spts));
            memcpy(p.dpts, ms[k].dpts, sizeof(p.dpts));
            p.invflags = ms[k].tinv;
            w = nfx_ext(out + pos, outsize - pos, "tcp", 0, &p, sizeof(p));
        } else {
            struct xt_udp p;
            memset(&p, 0, sizeof(p));
            memcpy(p.spts, ms[k].spts, sizeof(p.spts));
            memcpy(p.dpts, ms[k].dpts, sizeof(p.dpts));
            p.invflags = ms[k].tinv;
            w = nfx_ext(out + pos, outsize - pos, "udp", 0, &p, sizeof(p));
        }
        if (!w)
            return 0;
        pos += w;
    }
    match_len = pos - entry_size;
    if (!strcmp(target, "REDIRECT")) {
        size_t w;
        if (family == 4) {
            struct nf_nat_ipv4_multi_range_compat r;
            memset(&r, 0, sizeof(r));
            r.rangesize = 1;
            if (redirect_ports) {
                r.range[0].flags = NF_NAT_RANGE_PROTO_SPECIFIED;
                r.range[0].min.all = htons((uint16_t)rport[0]);
                r.range[0].max.all = htons((uint16_t)rport[1]);
            }
            w = nfx_ext(out + pos, outsize - pos, "REDIRECT", 0, &r, sizeof(r));
        } else {
            struct nf_nat_range r;
            memset(&r, 0, sizeof(r));
            if (redirect_ports) {
                r.flags = NF_NAT_RANGE_PROTO_SPECIFIED;
                r.min_proto.all = htons((uint16_t)rport[0]);
                r.max_proto.all = htons((uint16_t)rport[1]);
            }
            w = nfx_ext(out + pos, outsize - pos, "REDIRECT", 0, &r, sizeof(r));
        }
        if (!w)
            return 0;
        pos += w;
    } else {
        static const unsigned char verdict[4];
        size_t w = nfx_ext(out + pos, outsize - pos, target, 0, verdict, sizeof(verdict));
        if (!w)
            return 0;
        pos += w;
    }
    if (pos > 0xFFFF)
        return 0;

    if (family == 4) {
        struct ipt_entry *e = (struct ipt_entry *)out;
        struct ipt_ip *ip = &e->ip;
        if (src.set) {
            memcpy(&ip->src, src.raw, 4);
            nfx_mask((unsigned char *)&ip->smsk, 4, src.plen);
        }
        if (dst.set) {
            memcpy(&ip->dst, dst.raw, 4);
            nfx_mask((unsigned char *)&ip->dmsk, 4, dst.plen);
        }
        nfx_iface(&iif, ip->iniface, ip->iniface_mask);
        nfx_iface(&oif, ip->outiface, ip->outiface_mask);
        ip->invflags = (uint8_t)((iif.set && iif.neg ? IPT_INV_VIA_IN : 0) |
                                 (oif.set && oif.neg ? IPT_INV_VIA_OUT : 0) |
                                 (src.set && src.neg ? IPT_INV_SRCIP : 0) |
                                 (dst.set && dst.neg ? IPT_INV_DSTIP : 0) |
                                 (proto_set && proto_neg ? IPT_INV_PROTO : 0));
        ip->proto = (uint16_t)proto;
        e->target_offset = (uint16_t)(entry_size + match_len);
        e->next_offset = (uint16_t)pos;
    } else {
        struct ip6t_entry *e = (struct ip6t_entry *)out;
        struct ip6t_ip6 *ip = &e->ipv6;
        if (src.set) {
            memcpy(&ip->src, src.raw, 16);
            nfx_mask((unsigned char *)&ip->smsk, 16, src.plen);
        }
        if (dst.set) {
            memcpy(&ip->dst, dst.raw, 16);
            nfx_mask((unsigned char *)&ip->dmsk, 16, dst.plen);
        }
        nfx_iface(&iif, ip->iniface, ip->iniface_mask);
        nfx_iface(&oif, ip->outiface, ip->outiface_mask);
        /* the IP6T_INV_* bits have the IPT_INV_* values (xtenc.ip_header relies on it too) */
        ip->invflags = (uint8_t)((iif.set && iif.neg ? IP6T_INV_VIA_IN : 0) |
                                 (oif.set && oif.neg ? IP6T_INV_VIA_OUT : 0) |
                                 (src.set && src.neg ? IP6T_INV_SRCIP : 0) |
                                 (dst.set && dst.neg ? IP6T_INV_DSTIP : 0) |
                                 (proto_set && proto_neg ? IP6T_INV_PROTO : 0));
        ip->proto = (uint16_t)proto;
        if (proto)
            ip->flags = IP6T_F_PROTO;
        e->target_offset = (uint16_t)(entry_size + match_len);
        e->next_offset = (uint16_t)pos;
    }
    return (int)pos;
}

/* Encode nrules rules whose tokens are consecutive in toks (ntoks[i] each, every token
 * NUL-terminated or followed by the next one's NUL separator). Entry i lands at the sum of
 * sizes[0..i) in out; sizes[i] == 0 means "declined, use the Python path". Returns the
 * bytes written in total, or -1 if the token buffer does not hold that many tokens. */
int nf_xt_encode(int family, const char *toks, size_t len, const int *ntoks, int nrules,
                 unsigned char *out, size_t outsize, int *sizes)
{
    const char *p = toks, *end = toks + len;
    size_t pos = 0;
    for (int i = 0; i < nrules; i++) {
        const char *start = p;
        int n;
        for (int k = 0; k < ntoks[i]; k++) {
            if (p > end)
                return -1;
            p += strlen(p) + 1;
        }
        if (p > end + 1)
            return -1;
        n = nfx_encode_one(family, start, (size_t)(p - start) - (ntoks[i] ? 1 : 0), ntoks[i],
                           out + pos, outsize - pos);
        sizes[i] = n;
        pos += (size_t)n;
    }
    return (int)pos;
}
