/* Strict JSON for the front: see json.h for what it accepts and why. */
#define _GNU_SOURCE
#include "json.h"

#include <stdlib.h>
#include <string.h>

struct parser {
    struct jdoc *doc;
    const unsigned char *p, *end;
    int depth;
};

static void skip_ws(struct parser *ps)
{
    while (ps->p < ps->end && (*ps->p == ' ' || *ps->p == '\t' || *ps->p == '\n' || *ps->p == '\r'))
        ps->p++;
}

static int new_node(struct parser *ps, enum jtype type)
{
    struct jdoc *d = ps->doc;
    if (d->n >= d->cap) {
        int cap = d->cap ? d->cap * 2 : 64;
        struct jnode *grown;
        if (cap > JSON_MAX_NODES)
            cap = JSON_MAX_NODES;
        if (d->n >= cap)
            return -1;
        grown = realloc(d->nodes, (size_t)cap * sizeof *grown);
        if (grown == NULL)
            return -1;
        d->nodes = grown;
        d->cap = cap;
    }
    memset(&d->nodes[d->n], 0, sizeof d->nodes[0]);
    d->nodes[d->n].type = type;
    d->nodes[d->n].first = -1;
    d->nodes[d->n].next = -1;
    return d->n++;
}

/* Length of the UTF-8 sequence at s (at most n bytes available), or 0 if invalid. */
static size_t utf8_seq(const unsigned char *s, size_t n)
{
    unsigned char c = s[0];
    if (c < 0x80)
        return 1;
    if (c >= 0xC2 && c <= 0xDF)
        return n >= 2 && (s[1] & 0xC0) == 0x80 ? 2 : 0;
    if (c >= 0xE0 && c <= 0xEF) {
        unsigned char lo = c == 0xE0 ? 0xA0 : 0x80, hi = c == 0xED ? 0x9F : 0xBF;
        return n >= 3 && s[1] >= lo && s[1] <= hi && (s[2] & 0xC0) == 0x80 ? 3 : 0;
    }
    if (c >= 0xF0 && c <= 0xF4) {
        unsigned char lo = c == 0xF0 ? 0x90 : 0x80, hi = c == 0xF4 ? 0x8F : 0xBF;
        return n >= 4 && s[1] >= lo && s[1] <= hi && (s[2] & 0xC0) == 0x80 && (s[3] & 0xC0) == 0x80 ? 4 : 0;
    }
    return 0;
}

int utf8_valid(const char *s, size_t len)
{
    const unsigned char *p = (const unsigned char *)s, *end = p + len;
    while (p < end) {
        size_t n = utf8_seq(p, (size_t)(end - p));
        if (n == 0)
            return 0;
        p += n;
    }
    return 1;
}

static int hex4(const unsigned char *p, unsigned *out)
{
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        unsigned char c = p[i];
        v <<= 4;
        if (c >= '0' && c <= '9')
            v |= (unsigned)(c - '0');
        else if (c >= 'a' && c <= 'f')
            v |= (unsigned)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F')
            v |= (unsigned)(c - 'A' + 10);
        else
            return -1;
    }
    *out = v;
    return 0;
}

static void put_utf8(char *dst, size_t *o, unsigned cp)
{
    if (cp < 0x80) {
        dst[(*o)++] = (char)cp;
    } else if (cp < 0x800) {
        dst[(*o)++] = (char)(0xC0 | (cp >> 6));
        dst[(*o)++] = (char)(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
        dst[(*o)++] = (char)(0xE0 | (cp >> 12));
        dst[(*o)++] = (char)(0x80 | ((cp >> 6) & 0x3F));
        dst[(*o)++] = (char)(0x80 | (cp & 0x3F));
    } else {
        dst[(*o)++] = (char)(0xF0 | (cp >> 18));
        dst[(*o)++] = (char)(0x80 | ((cp >> 12) & 0x3F));
        dst[(*o)++] = (char)(0x80 | ((cp >> 6) & 0x3F));
        dst[(*o)++] = (char)(0x80 | (cp & 0x3F));
    }
}

/* A string at ps->p (on the opening quote), decoded into doc->strs. */
static int parse_string(struct parser *ps, const char **out, size_t *outlen)
{
    struct jdoc *d = ps->doc;
    char *dst = d->strs + d->used;
    size_t o = 0;

    ps->p++;
    for (;;) {
        unsigned char c;
        if (ps->p >= ps->end)
            return -1;
        c = *ps->p;
        if (c == '"') {
            ps->p++;
            break;
        }
        if (c < 0x20)
            return -1; /* strict: control characters must be escaped */
        if (c == '\\') {
            unsigned cp;
            if (ps->end - ps->p < 2)
                return -1;
            c = ps->p[1];
            ps->p += 2;
            switch (c) {
            case '"': case '\\': case '/': dst[o++] = (char)c; continue;
            case 'b': dst[o++] = '\b'; continue;
            case 'f': dst[o++] = '\f'; continue;
            case 'n': dst[o++] = '\n'; continue;
            case 'r': dst[o++] = '\r'; continue;
            case 't': dst[o++] = '\t'; continue;
            case 'u': break;
            default: return -1;
            }
            if (ps->end - ps->p < 4 || hex4(ps->p, &cp) != 0)
                return -1;
            ps->p += 4;
            if (cp >= 0xDC00 && cp <= 0xDFFF)
                return -1; /* a lone low surrogate */
            if (cp >= 0xD800 && cp <= 0xDBFF) {
                unsigned lo;
                if (ps->end - ps->p < 6 || ps->p[0] != '\\' || ps->p[1] != 'u' || hex4(ps->p + 2, &lo) != 0 ||
                    lo < 0xDC00 || lo > 0xDFFF)
                    return -1; /* a lone high surrogate */
                ps->p += 6;
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            }
            put_utf8(dst, &o, cp); /* never longer than the escape it came from */
            continue;
        }
        {
            size_t n = utf8_seq(ps->p, (size_t)(ps->end - ps->p));
            if (n == 0)
                return -1;
            memcpy(dst + o, ps->p, n);
            o += n;
            ps->p += n;
        }
    }
    *out = dst;
    *outlen = o;
    d->used += o;
    return 0;
}

static int parse_number(struct parser *ps, int node)
{
    const unsigned char *start = ps->p;
    int is_float = 0;

    if (ps->p < ps->end && *ps->p == '-')
        ps->p++;
    if (ps->p >= ps->end)
        return -1;
    if (*ps->p == '0') {
        ps->p++;
    } else if (*ps->p >= '1' && *ps->p <= '9') {
        while (ps->p < ps->end && *ps->p >= '0' && *ps->p <= '9')
            ps->p++;
    } else {
        return -1;
    }
    if (ps->p < ps->end && *ps->p == '.') {
        is_float = 1;
        ps->p++;
        if (ps->p >= ps->end || *ps->p < '0' || *ps->p > '9')
            return -1;
        while (ps->p < ps->end && *ps->p >= '0' && *ps->p <= '9')
            ps->p++;
    }
    if (ps->p < ps->end && (*ps->p == 'e' || *ps->p == 'E')) {
        is_float = 1;
        ps->p++;
        if (ps->p < ps->end && (*ps->p == '+' || *ps->p == '-'))
            ps->p++;
        if (ps->p >= ps->end || *ps->p < '0' || *ps->p > '9')
            return -1;
        while (ps->p < ps->end && *ps->p >= '0' && *ps->p <= '9')
            ps->p++;
    }
    if (ps->p - start > 64)
        return -1; /* no CNI document needs more; keeps strtod's input small */
    ps->doc->nodes[node].type = is_float ? J_FLOAT : J_INT;
    ps->doc->nodes[node].s = (const char *)start;
    ps->doc->nodes[node].len = (size_t)(ps->p - start);
    return 0;
}

static int parse_value(struct parser *ps);

static int keys_equal(const struct jnode *a, const char *k, size_t klen)
{
    return a->klen == klen && memcmp(a->key, k, klen) == 0;
}

static int parse_container(struct parser *ps, int node, int is_obj)
{
    int last = -1;
    struct jdoc *d = ps->doc;

    if (++ps->depth > JSON_MAX_DEPTH)
        return -1;
    ps->p++;
    skip_ws(ps);
    if (ps->p < ps->end && *ps->p == (is_obj ? '}' : ']')) {
        ps->p++;
        ps->depth--;
        return 0;
    }
    for (;;) {
        const char *key = NULL;
        size_t klen = 0;
        int child;
        skip_ws(ps);
        if (is_obj) {
            if (ps->p >= ps->end || *ps->p != '"' || parse_string(ps, &key, &klen) != 0)
                return -1;
            for (int k = d->nodes[node].first; k >= 0; k = d->nodes[k].next)
                if (keys_equal(&d->nodes[k], key, klen))
                    return -1; /* duplicate key: Python keeps the last value, we hand over */
            skip_ws(ps);
            if (ps->p >= ps->end || *ps->p != ':')
                return -1;
            ps->p++;
            skip_ws(ps);
        }
        child = parse_value(ps);
        if (child < 0)
            return -1;
        d->nodes[child].key = key;
        d->nodes[child].klen = klen;
        if (last < 0)
            d->nodes[node].first = child;
        else
            d->nodes[last].next = child;
        last = child;
        if (++d->nodes[node].count > JSON_MAX_MEMBERS)
            return -1;
        skip_ws(ps);
        if (ps->p >= ps->end)
            return -1;
        if (*ps->p == ',') {
            ps->p++;
            continue;
        }
        if (*ps->p == (is_obj ? '}' : ']')) {
            ps->p++;
            break;
        }
        return -1;
    }
    ps->depth--;
    return 0;
}

static int literal(struct parser *ps, const char *word)
{
    size_t n = strlen(word);
    if ((size_t)(ps->end - ps->p) < n || memcmp(ps->p, word, n) != 0)
        return -1;
    ps->p += n;
    return 0;
}

/* Parse one value at ps->p (no leading whitespace); its node index, or -1. */
static int parse_value(struct parser *ps)
{
    int node;
    if (ps->p >= ps->end)
        return -1;
    switch (*ps->p) {
    case '{':
    case '[':
        node = new_node(ps, *ps->p == '{' ? J_OBJ : J_ARR);
        if (node < 0 || parse_container(ps, node, *ps->p == '{') != 0)
            return -1;
        return node;
    case '"':
        node = new_node(ps, J_STR);
        if (node < 0 || parse_string(ps, &ps->doc->nodes[node].s, &ps->doc->nodes[node].len) != 0)
            return -1;
        return node;
    case 'n':
        node = new_node(ps, J_NULL);
        return node < 0 || literal(ps, "null") != 0 ? -1 : node;
    case 't':
        node = new_node(ps, J_TRUE);
        return node < 0 || literal(ps, "true") != 0 ? -1 : node;
    case 'f':
        node = new_node(ps, J_FALSE);
        return node < 0 || literal(ps, "false") != 0 ? -1 : node;
    default:
        node = new_node(ps, J_INT);
        return node < 0 || parse_number(ps, node) != 0 ? -1 : node;
    }
}

int json_parse(struct jdoc *doc, const char *text, size_t len)
{
    struct parser ps;

    memset(doc, 0, sizeof *doc);
    doc->strs = malloc(len + 1);
    if (doc->strs == NULL)
        return -1;
    ps.doc = doc;
    ps.p = (const unsigned char *)text;
    ps.end = ps.p + len;
    ps.depth = 0;
    skip_ws(&ps);
    if (parse_value(&ps) != 0)
        return -1;
    skip_ws(&ps);
    return ps.p == ps.end ? 0 : -1;
}

void json_free(struct jdoc *doc)
{
    free(doc->nodes);
    free(doc->strs);
    memset(doc, 0, sizeof *doc);
}

int json_member(const struct jdoc *doc, int obj, const char *key)
{
    size_t klen = strlen(key);
    if (obj < 0 || doc->nodes[obj].type != J_OBJ)
        return -1;
    for (int k = doc->nodes[obj].first; k >= 0; k = doc->nodes[k].next)
        if (keys_equal(&doc->nodes[k], key, klen))
            return k;
    return -1;
}

int json_is_str(const struct jdoc *doc, int i, const char *s)
{
    size_t n = strlen(s);
    return i >= 0 && doc->nodes[i].type == J_STR && doc->nodes[i].len == n && memcmp(doc->nodes[i].s, s, n) == 0;
}

/* An integer's text without a "-" on zero ("-0" is 0 in Python). */
static void int_text(const struct jnode *n, const char **s, size_t *len)
{
    *s = n->s;
    *len = n->len;
    if (n->len == 2 && n->s[0] == '-' && n->s[1] == '0') {
        (*s)++;
        (*len)--;
    }
}

int json_equal(const struct jdoc *a, int i, const struct jdoc *b, int j)
{
    const struct jnode *x = &a->nodes[i], *y = &b->nodes[j];
    if (x->type != y->type)
        return 0;
    switch (x->type) {
    case J_NULL: case J_TRUE: case J_FALSE:
        return 1;
    case J_INT: {
        const char *s, *t;
        size_t sl, tl;
        int_text(x, &s, &sl);
        int_text(y, &t, &tl);
        return sl == tl && memcmp(s, t, sl) == 0;
    }
    case J_FLOAT: {
        char bx[72], by[72];
        memcpy(bx, x->s, x->len);
        bx[x->len] = '\0';
        memcpy(by, y->s, y->len);
        by[y->len] = '\0';
        return strtod(bx, NULL) == strtod(by, NULL); /* both correctly rounded, as Python's */
    }
    case J_STR:
        return x->len == y->len && memcmp(x->s, y->s, x->len) == 0;
    case J_ARR:
    case J_OBJ: {
        int k = x->first, l = y->first;
        if (x->count != y->count)
            return 0;
        for (; k >= 0 && l >= 0; k = a->nodes[k].next, l = b->nodes[l].next) {
            if (x->type == J_OBJ && !keys_equal(&a->nodes[k], b->nodes[l].key, b->nodes[l].klen))
                return 0;
            if (!json_equal(a, k, b, l))
                return 0;
        }
        return k < 0 && l < 0;
    }
    }
    return 0;
}

void out_put(struct out *o, const char *s, size_t n)
{
    if (o->failed)
        return;
    if (n > o->max - o->len) {
        o->failed = 1;
        return;
    }
    if (o->len + n > o->cap) {
        size_t cap = o->cap ? o->cap : 4096;
        char *grown;
        while (cap < o->len + n)
            cap *= 2;
        if (cap > o->max)
            cap = o->max;
        grown = realloc(o->buf, cap);
        if (grown == NULL) {
            o->failed = 1;
            return;
        }
        o->buf = grown;
        o->cap = cap;
    }
    memcpy(o->buf + o->len, s, n);
    o->len += n;
}

void out_str(struct out *o, const char *s)
{
    out_put(o, s, strlen(s));
}

static void out_u(struct out *o, unsigned v)
{
    static const char hex[] = "0123456789abcdef";
    char e[6] = {'\\', 'u', hex[(v >> 12) & 15], hex[(v >> 8) & 15], hex[(v >> 4) & 15], hex[v & 15]};
    out_put(o, e, 6);
}

void out_json_string(struct out *o, const char *s, size_t len)
{
    const unsigned char *p = (const unsigned char *)s, *end = p + len;
    out_put(o, "\"", 1);
    while (p < end) {
        unsigned char c = *p;
        const unsigned char *run = p;
        /* json.encoder's ESCAPE_ASCII: what is not printable ASCII, plus '"' and '\\' */
        while (p < end && *p >= 0x20 && *p <= 0x7E && *p != '"' && *p != '\\')
            p++;
        if (p > run) {
            out_put(o, (const char *)run, (size_t)(p - run));
            continue;
        }
        c = *p;
        if (c == '"') { out_put(o, "\\\"", 2); p++; continue; }
        if (c == '\\') { out_put(o, "\\\\", 2); p++; continue; }
        if (c == '\n') { out_put(o, "\\n", 2); p++; continue; }
        if (c == '\r') { out_put(o, "\\r", 2); p++; continue; }
        if (c == '\t') { out_put(o, "\\t", 2); p++; continue; }
        if (c == '\b') { out_put(o, "\\b", 2); p++; continue; }
        if (c == '\f') { out_put(o, "\\f", 2); p++; continue; }
        if (c < 0x80) { out_u(o, c); p++; continue; }
        {
            size_t n = utf8_seq(p, (size_t)(end - p));
            unsigned cp;
            if (n == 0) { /* callers pass valid UTF-8; never emit a broken document */
                o->failed = 1;
                return;
            }
            if (n == 2)
                cp = ((unsigned)(p[0] & 0x1F) << 6) | (p[1] & 0x3F);
            else if (n == 3)
                cp = ((unsigned)(p[0] & 0x0F) << 12) | ((unsigned)(p[1] & 0x3F) << 6) | (p[2] & 0x3F);
            else
                cp = ((unsigned)(p[0] & 0x07) << 18) | ((unsigned)(p[1] & 0x3F) << 12) |
                     ((unsigned)(p[2] & 0x3F) << 6) | (p[3] & 0x3F);
            if (cp >= 0x10000) {
                cp -= 0x10000;
                out_u(o, 0xD800 | (cp >> 10));
                out_u(o, 0xDC00 | (cp & 0x3FF));
            } else {
                out_u(o, cp);
            }
            p += n;
        }
    }
    out_put(o, "\"", 1);
}

int json_write(struct out *o, const struct jdoc *doc, int i)
{
    const struct jnode *n = &doc->nodes[i];
    switch (n->type) {
    case J_NULL: out_str(o, "null"); break;
    case J_TRUE: out_str(o, "true"); break;
    case J_FALSE: out_str(o, "false"); break;
    case J_INT: {
        const char *s;
        size_t len;
        int_text(n, &s, &len);
        out_put(o, s, len);
        break;
    }
    case J_FLOAT:
        return -1; /* Python prints repr(float); not reproduced here */
    case J_STR:
        out_json_string(o, n->s, n->len);
        break;
    case J_ARR:
    case J_OBJ:
        out_put(o, n->type == J_OBJ ? "{" : "[", 1);
        for (int k = n->first; k >= 0; k = doc->nodes[k].next) {
            if (k != n->first)
                out_put(o, ",", 1);
            if (n->type == J_OBJ) {
                out_json_string(o, doc->nodes[k].key, doc->nodes[k].klen);
                out_put(o, ":", 1);
            }
            if (json_write(o, doc, k) != 0)
                return -1;
        }
        out_put(o, n->type == J_OBJ ? "}" : "]", 1);
        break;
    }
    return o->failed ? -1 : 0;
}
