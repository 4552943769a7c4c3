/* The front's agent path (see agent.h for the contract with the plugin). */
#define _GNU_SOURCE
#include "agent.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <poll.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <time.h>
#include <unistd.h>

#include "json.h"

#define NSFS_MAGIC 0x6e736673
#define PROC_SUPER_MAGIC 0x9fa0
#define NS_GET_NSTYPE 0xb703

static double clock_start, runnable_before;

static double monotonic(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* As addtiming: the time this task ran or waited runnable since fork (counts across exec). */
void front_clock_start(void)
{
    char buf[128];
    int fd = open("/proc/self/schedstat", O_RDONLY | O_CLOEXEC);
    clock_start = monotonic();
    if (fd >= 0) {
        ssize_t n = read(fd, buf, sizeof buf - 1);
        unsigned long long run, wait;
        if (n > 0) {
            buf[n] = '\0';
            if (sscanf(buf, "%llu %llu", &run, &wait) == 2)
                runnable_before = (double)(run + wait) / 1e9;
        }
        close(fd);
    }
}

int front_wants(const char *command)
{
    return command != NULL && strcmp(command, "ADD") == 0;
}

int read_stdin(struct bytes *in)
{
    size_t cap = 0;
    for (;;) {
        ssize_t n;
        if (in->len == cap) {
            char *grown;
            if (cap > FRONT_MAX_STDIN)
                return 1; /* more than the plugin reads: its code 6, on the bytes we hold */
            cap = cap ? cap * 4 : 16384;
            if (cap > FRONT_MAX_STDIN + 1)
                cap = FRONT_MAX_STDIN + 1;
            grown = realloc(in->buf, cap);
            if (grown == NULL)
                return in->len ? 1 : -1;
            in->buf = grown;
        }
        n = read(STDIN_FILENO, in->buf + in->len, cap - in->len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return in->len ? 1 : -1;
        if (n == 0)
            return in->len > FRONT_MAX_STDIN ? 1 : 0;
        in->len += (size_t)n;
    }
}

int replay_stdin(const struct bytes *in)
{
    int fd = memfd_create("istio-cni-stdin", 0);
    if (fd < 0)
        return -1;
    for (size_t off = 0; off < in->len;) {
        ssize_t n = write(fd, in->buf + off, in->len - off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            close(fd);
            return -1;
        }
        off += (size_t)n;
    }
    if (lseek(fd, 0, SEEK_SET) != 0 || dup2(fd, STDIN_FILENO) < 0) {
        close(fd);
        return -1;
    }
    close(fd);
    return 0;
}

static void result_token(char *dst, size_t cap, int v)
{
    const char *word = v == FX_OK ? "ok" : v == FX_TIMEOUT ? "timeout" : v == FX_COMPLETE ? "complete"
                     : v == FX_EOF ? "eof" : v == FX_CAP ? "cap" : NULL;
    if (word)
        snprintf(dst, cap, "%s", word);
    else
        snprintf(dst, cap, "%d", v);
}

int record_exchange(const struct exchange *x)
{
    char head[128 + 2 * sizeof x->sock], c[16], s[16], e[16];
    size_t hl, sl = strlen(x->sock);
    int fd = memfd_create("istio-cni-agent-exchange", 0); /* no CLOEXEC: the plugin reads it */

    if (fd < 0)
        return -1;
    result_token(c, sizeof c, x->connect_result);
    result_token(s, sizeof s, x->send_result);
    result_token(e, sizeof e, x->end);
    hl = (size_t)snprintf(head, sizeof head, "istio-cni-front-exchange 1 %s %s %s ", c, s, e);
    for (size_t i = 0; i < sl && hl + 3 < sizeof head; i++)
        hl += (size_t)snprintf(head + hl, sizeof head - hl, "%02x", (unsigned char)x->sock[i]);
    head[hl++] = '\n';
    for (int part = 0; part < 2; part++) {
        const char *p = part ? x->raw : head;
        size_t len = part ? x->len : hl;
        while (len > 0) {
            ssize_t n = write(fd, p, len);
            if (n < 0 && errno == EINTR)
                continue;
            if (n <= 0) {
                close(fd);
                return -1;
            }
            p += n;
            len -= (size_t)n;
        }
    }
    if (lseek(fd, 0, SEEK_SET) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

/* ---- what the plugin checks before it asks the agent ---- */

static int env_ok(const char *v, int required)
{
    if (v == NULL || *v == '\0')
        return !required;
    return utf8_valid(v, strlen(v));
}

static int label_ok(const char *s, size_t n, size_t max)
{
    if (n == 0 || n > max || s[0] == '-' || s[n - 1] == '-')
        return 0;
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= '0' && s[i] <= '9') || s[i] == '-'))
            return 0;
    return 1;
}

/* k8s.check_pod_ref: namespace a DNS-1123 label, name a DNS-1123 subdomain. */
static int pod_ref_ok(const char *ns, size_t nsl, const char *name, size_t nl)
{
    size_t start = 0;
    if (!label_ok(ns, nsl, 63) || nl == 0 || nl > 253)
        return 0;
    for (size_t i = 0; i <= nl; i++) {
        if (i == nl || name[i] == '.') {
            if (!label_ok(name + start, i - start, 253))
                return 0;
            start = i + 1;
        }
    }
    return 1;
}

struct pod_ref {
    const char *ns, *name;
    size_t nsl, nl;
};

/* config.parse_k8s_args on CNI_ARGS, reduced to what the front needs; 0 or -1 (hand over). */
static int parse_cni_args(const char *raw, struct pod_ref *ref)
{
    static const char *known[] = {"K8S_POD_NAMESPACE", "K8S_POD_NAME", "K8S_POD_INFRA_CONTAINER_ID", "K8S_POD_UID"};
    int unknown = 0, ignore = 0;
    const char *p = raw;

    memset(ref, 0, sizeof *ref);
    if (raw == NULL || *raw == '\0')
        return -1;
    for (;;) {
        const char *end = strchr(p, ';'), *eq;
        size_t len = end ? (size_t)(end - p) : strlen(p), kl;
        eq = memchr(p, '=', len);
        if (eq == NULL || memchr(eq + 1, '=', len - (size_t)(eq + 1 - p)) != NULL)
            return -1; /* not exactly KEY=VALUE: the plugin's code 7 */
        kl = (size_t)(eq - p);
        if (kl == 13 && memcmp(p, "IgnoreUnknown", 13) == 0) {
            size_t vl = len - kl - 1;
            const char *v = eq + 1;
            if ((vl == 1 && (*v == '1' || *v == '0')) || (vl == 4 && strncasecmp(v, "true", 4) == 0) ||
                (vl == 5 && strncasecmp(v, "false", 5) == 0))
                ignore = (*v == '1' || *v == 't' || *v == 'T');
            else
                return -1;
        } else {
            int found = 0;
            for (size_t k = 0; k < sizeof known / sizeof known[0]; k++)
                if (strlen(known[k]) == kl && memcmp(p, known[k], kl) == 0)
                    found = 1;
            if (!found)
                unknown = 1;
            else if (kl == 17 && memcmp(p, "K8S_POD_NAMESPACE", 17) == 0)
                ref->ns = eq + 1, ref->nsl = len - kl - 1;
            else if (kl == 12 && memcmp(p, "K8S_POD_NAME", 12) == 0)
                ref->name = eq + 1, ref->nl = len - kl - 1;
        }
        if (end == NULL)
            break;
        p = end + 1;
    }
    if (unknown && !ignore)
        return -1;
    return ref->ns && ref->name ? 0 : -1;
}

/* skel.check_netns: a network namespace, and not our own. */
static int netns_ok(const char *path)
{
    struct statfs sfs;
    struct stat a, b;
    int ok = 0, own, fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    own = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
    if (own >= 0 && fstatfs(fd, &sfs) == 0 && (sfs.f_type == NSFS_MAGIC || sfs.f_type == PROC_SUPER_MAGIC) &&
        ioctl(fd, NS_GET_NSTYPE) == CLONE_NEWNET && fstat(fd, &a) == 0 && fstat(own, &b) == 0)
        ok = !(a.st_dev == b.st_dev && a.st_ino == b.st_ino);
    if (own >= 0)
        close(own);
    close(fd);
    return ok;
}

/* A string member, absent/null allowed: 1 present (out set), 0 absent, -1 wrong type. */
static int opt_str(const struct jdoc *d, int obj, const char *key, const char **out, size_t *len)
{
    int m = json_member(d, obj, key);
    if (m < 0 || d->nodes[m].type == J_NULL)
        return 0;
    if (d->nodes[m].type != J_STR)
        return -1;
    *out = d->nodes[m].s;
    *len = d->nodes[m].len;
    return 1;
}

/* Is ns in the exclude list at obj.key (absent/null: empty)? 1/0, or -1 (a shape we leave
 * to the plugin, e.g. the comma-separated string form). */
static int excluded(const struct jdoc *d, int obj, const struct pod_ref *ref)
{
    int m = obj < 0 ? -1 : json_member(d, obj, "exclude_namespaces");
    if (m < 0 || d->nodes[m].type == J_NULL)
        return 0;
    if (d->nodes[m].type != J_ARR)
        return -1;
    for (int k = d->nodes[m].first; k >= 0; k = d->nodes[k].next) {
        if (d->nodes[k].type != J_STR)
            return -1;
        if (d->nodes[k].len == ref->nsl && memcmp(d->nodes[k].s, ref->ns, ref->nsl) == 0)
            return 1;
    }
    return 0;
}

static int version_supported(const char *versions, const char *v, size_t vl)
{
    const char *p = versions;
    while (*p) {
        const char *end = strchr(p, ',');
        size_t n = end ? (size_t)(end - p) : strlen(p);
        if (n == vl && memcmp(p, v, n) == 0)
            return 1;
        if (!end)
            break;
        p = end + 1;
    }
    return 0;
}

struct add_plan {
    const char *version;
    size_t vlen;
    struct pod_ref ref;
    size_t run_dir_len; /* sock starts with the run dir */
    char sock[sizeof(((struct sockaddr_un *)0)->sun_path)];
    double timeout;
    int expected; /* node of the prevResult handed on, -1: {"cniVersion": version}, -2: unknown */
};

/* Everything the plugin decides before it asks the agent; 0 = ask, -1 = hand over. */
static int plan_add(const struct jdoc *d, const char *versions, const char *sock_name, struct add_plan *pl)
{
    const char *s, *args = getenv("CNI_ARGS");
    size_t sl;
    int k8s, m, r;
    struct pod_ref ref;

    if (d->nodes[0].type != J_OBJ)
        return -1;
    r = opt_str(d, 0, "cniVersion", &pl->version, &pl->vlen);
    if (r < 0 || (r == 1 && pl->vlen == 0) || r == 0) {
        if (r < 0)
            return -1;
        pl->version = "0.1.0", pl->vlen = 5;
    }
    if (!version_supported(versions, pl->version, pl->vlen))
        return -1;
    k8s = json_member(d, 0, "kubernetes");
    if (k8s >= 0 && d->nodes[k8s].type == J_NULL)
        k8s = -1;
    if (k8s >= 0 && d->nodes[k8s].type != J_OBJ)
        return -1;
    if (parse_cni_args(args, &ref) != 0 || !pod_ref_ok(ref.ns, ref.nsl, ref.name, ref.nl))
        return -1;
    if (excluded(d, 0, &ref) != 0 || excluded(d, k8s, &ref) != 0)
        return -1; /* excluded (the plugin passes it through) or a list shape left to it */
    r = opt_str(d, 0, "pod_namespace", &s, &sl);
    if (r < 0 || (r == 1 && sl == ref.nsl && memcmp(s, ref.ns, sl) == 0))
        return -1; /* perhaps the node program's own pod: the plugin decides */
    r = opt_str(d, 0, "cni_agent_run_dir", &s, &sl);
    if (r <= 0 || sl == 0 || memchr(s, '\0', sl) != NULL)
        return -1; /* no agent configured */
    if (strlen(sock_name) + sl + 2 > sizeof pl->sock)
        return -1;
    pl->ref = ref;
    pl->run_dir_len = sl;
    memcpy(pl->sock, s, sl);
    pl->sock[sl] = '/';
    strcpy(pl->sock + sl + 1, sock_name);
    pl->timeout = FRONT_DEFAULT_TIMEOUT;
    m = json_member(d, 0, "agent_timeout_seconds");
    if (m >= 0 && d->nodes[m].type != J_NULL) {
        char num[72];
        if (d->nodes[m].type != J_INT && d->nodes[m].type != J_FLOAT)
            return -1;
        memcpy(num, d->nodes[m].s, d->nodes[m].len);
        num[d->nodes[m].len] = '\0';
        pl->timeout = strtod(num, NULL);
    }
    if (!(pl->timeout > 0) || !isfinite(pl->timeout))
        return -1;
    if (pl->timeout > FRONT_MAX_TIMEOUT)
        pl->timeout = FRONT_MAX_TIMEOUT;
    m = json_member(d, 0, "prevResult");
    if (m < 0 || d->nodes[m].type == J_NULL || (d->nodes[m].type == J_OBJ && d->nodes[m].count == 0)) {
        pl->expected = -1;
    } else {
        int v = json_member(d, m, "cniVersion");
        pl->expected = -2;
        if (d->nodes[m].type == J_OBJ && v >= 0 && d->nodes[v].type == J_STR && d->nodes[v].len == pl->vlen &&
            memcmp(d->nodes[v].s, pl->version, pl->vlen) == 0)
            pl->expected = m; /* versions.convert_result hands it on unchanged */
    }
    return 0;
}

/* ---- the exchange ---- */

static int wait_for(int fd, short events, double deadline)
{
    for (;;) {
        double left = deadline - monotonic();
        struct pollfd p = {.fd = fd, .events = events};
        int ms, r;
        if (left <= 0)
            return FX_TIMEOUT;
        ms = (int)(left * 1000) + 1;
        r = poll(&p, 1, ms);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return errno;
        if (r > 0)
            return FX_OK;
    }
}

/* Where a plain answer (head, then one Content-Length of body) ends, found as bytes arrive:
 * each byte is scanned about once, however the answer is cut into reads. */
struct framing {
    size_t scanned; /* bytes searched for the end of the head */
    size_t total;   /* head + body length once known; 0 until then */
    int plain;      /* 0 once the head says the answer is not plain: read to EOF */
};

static int answer_complete(struct framing *f, const char *raw, size_t len)
{
    const char *end, *p;
    size_t head, cl = 0, from;
    int have = 0;

    if (f->total)
        return len >= f->total;
    if (!f->plain)
        return 0;
    from = f->scanned > 3 ? f->scanned - 3 : 0;
    end = len > from ? memmem(raw + from, len - from, "\r\n\r\n", 4) : NULL;
    f->scanned = len;
    if (end == NULL) {
        if (len > FRONT_MAX_HEAD + 4)
            f->plain = 0;
        return 0;
    }
    head = (size_t)(end - raw) + 4;
    for (p = memchr(raw, '\n', head); p != NULL && p < end; p = memchr(p + 1, '\n', (size_t)(end - p))) {
        const char *line = p + 1;
        if (strncasecmp(line, "transfer-encoding:", 18) == 0)
            have = 2;
        if (strncasecmp(line, "content-length:", 15) == 0) {
            const char *v = line + 15;
            have++;
            while (*v == ' ' || *v == '\t')
                v++;
            for (; *v >= '0' && *v <= '9' && cl <= FRONT_MAX_ANSWER; v++)
                cl = cl * 10 + (size_t)(*v - '0');
        }
    }
    if (have != 1 || cl > FRONT_MAX_ANSWER) {
        f->plain = 0;
        return 0;
    }
    f->total = head + cl;
    return len >= f->total;
}

static void exchange(const struct add_plan *pl, const struct out *req, struct exchange *x)
{
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    double deadline = monotonic() + pl->timeout;
    size_t sent = 0;
    struct framing framing = {.plain = 1};
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0), r;

    strcpy(x->sock, pl->sock);
    strcpy(addr.sun_path, pl->sock);
    x->end = FX_EOF;
    if (fd < 0) {
        x->connect_result = errno;
        return;
    }
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) != 0) {
        if (errno != EINPROGRESS) {
            x->connect_result = errno;
            close(fd);
            return;
        }
        r = wait_for(fd, POLLOUT, deadline);
        if (r == FX_OK) {
            socklen_t l = sizeof r;
            if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &r, &l) != 0)
                r = errno;
        }
        if (r != FX_OK) {
            x->connect_result = r;
            close(fd);
            return;
        }
    }
    while (sent < req->len) {
        ssize_t n = send(fd, req->buf + sent, req->len - sent, MSG_NOSIGNAL);
        if (n >= 0) {
            sent += (size_t)n;
            continue;
        }
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN) {
            r = wait_for(fd, POLLOUT, deadline);
            if (r == FX_OK)
                continue;
        } else {
            r = errno;
        }
        x->send_result = r;
        if (r != EPIPE && r != ECONNRESET) { /* the plugin's sendall raises these two only after reading */
            close(fd);
            return;
        }
        break;
    }
    x->raw = malloc(FRONT_MAX_RECORD);
    if (x->raw == NULL) {
        x->end = ENOMEM;
        close(fd);
        return;
    }
    for (;;) {
        ssize_t n;
        if (answer_complete(&framing, x->raw, x->len)) {
            x->end = FX_COMPLETE;
            break;
        }
        if (x->len == FRONT_MAX_RECORD) {
            x->end = FX_CAP;
            break;
        }
        n = recv(fd, x->raw + x->len, FRONT_MAX_RECORD - x->len, 0);
        if (n > 0) {
            x->len += (size_t)n;
            continue;
        }
        if (n == 0) {
            x->end = FX_EOF;
            break;
        }
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN) {
            r = wait_for(fd, POLLIN, deadline);
            if (r == FX_OK)
                continue;
        } else {
            r = errno;
        }
        x->end = r;
        break;
    }
    close(fd);
}

/* ---- the happy answer ---- */

static int is_token(unsigned char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || strchr("!#$%&'*+-.^_`|~", c);
}

static int is_text(unsigned char c)
{
    return c == '\t' || c >= 0x20; /* http1._TEXT: HTAB, SP, visible ASCII and obs-text, no DEL */
}

/* The body of an HTTP/1.1 200 answer framed by one Content-Length, or NULL. */
static const char *plain_200_body(const struct exchange *x, size_t *blen)
{
    const char *raw = x->raw, *end, *line, *next;
    size_t head, cl = 0;
    int have = 0;

    if (x->connect_result != FX_OK || x->send_result != FX_OK || x->len < 17)
        return NULL;
    end = memmem(raw, x->len, "\r\n\r\n", 4);
    if (end == NULL || (size_t)(end - raw) > FRONT_MAX_HEAD)
        return NULL;
    head = (size_t)(end - raw) + 4;
    if (memcmp(raw, "HTTP/1.1 200", 12) != 0 || (raw[12] != '\r' && raw[12] != ' '))
        return NULL;
    for (line = raw; line < end; line = next + 2) {
        const char *colon = NULL;
        next = memmem(line, (size_t)(end + 2 - line), "\r\n", 2);
        for (const char *c = line; c < next; c++) {
            if (*c == '\r' || *c == '\n' || *c == 0x7F)
                return NULL;
            if (line != raw) {
                if (colon == NULL && *c == ':')
                    colon = c;
                else if (colon == NULL && !is_token((unsigned char)*c))
                    return NULL;
                else if (colon != NULL && !is_text((unsigned char)*c))
                    return NULL;
            } else if (c >= raw + 13 && !is_text((unsigned char)*c)) {
                return NULL;
            }
        }
        if (line == raw)
            continue;
        if (colon == NULL || colon == line)
            return NULL;
        if ((size_t)(colon - line) == 17 && strncasecmp(line, "transfer-encoding", 17) == 0)
            return NULL;
        if ((size_t)(colon - line) == 14 && strncasecmp(line, "content-length", 14) == 0) {
            const char *v = colon + 1, *ve = next;
            if (have++)
                return NULL;
            while (v < ve && (*v == ' ' || *v == '\t'))
                v++;
            while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t'))
                ve--;
            if (ve == v || ve - v > 7)
                return NULL;
            for (; v < ve; v++) {
                if (*v < '0' || *v > '9')
                    return NULL;
                cl = cl * 10 + (size_t)(*v - '0');
            }
        }
    }
    if (!have || cl > FRONT_MAX_ANSWER || x->len < head + cl)
        return NULL;
    *blen = cl;
    return raw + head;
}

/* The result to print when the answer is exactly {"result": <what the plugin hands on>}. */
static int happy_result(const struct jdoc *netconf, const struct add_plan *pl, const struct jdoc *ans)
{
    int result;
    if (ans->nodes[0].type != J_OBJ || ans->nodes[0].count != 1)
        return -1;
    result = json_member(ans, 0, "result");
    if (result < 0 || ans->nodes[result].type != J_OBJ)
        return -1;
    if (pl->expected >= 0)
        return json_equal(ans, result, netconf, pl->expected) ? result : -1;
    if (pl->expected == -1) {
        int v = json_member(ans, result, "cniVersion");
        return ans->nodes[result].count == 1 && v >= 0 && ans->nodes[v].type == J_STR &&
                       ans->nodes[v].len == pl->vlen && memcmp(ans->nodes[v].s, pl->version, pl->vlen) == 0
                   ? result
                   : -1;
    }
    return -1;
}

static int write_stdout(const char *p, size_t len)
{
    while (len > 0) {
        ssize_t n = write(STDOUT_FILENO, p, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return -1;
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

static void put_env_string(struct out *o, const char *key, const char *value)
{
    out_str(o, ",\"");
    out_str(o, key);
    out_str(o, "\":");
    out_json_string(o, value ? value : "", value ? strlen(value) : 0);
}

static void build_request(struct out *req, const struct bytes *in, const struct add_plan *pl)
{
    struct out body = {.max = 2u << 20};
    struct timespec now;
    char num[96], head[256];
    int hl;

    clock_gettime(CLOCK_REALTIME, &now);
    out_str(&body, "{\"command\":\"ADD\"");
    put_env_string(&body, "container_id", getenv("CNI_CONTAINERID"));
    put_env_string(&body, "netns", getenv("CNI_NETNS"));
    put_env_string(&body, "ifname", getenv("CNI_IFNAME"));
    put_env_string(&body, "args", getenv("CNI_ARGS"));
    put_env_string(&body, "path", getenv("CNI_PATH"));
    out_str(&body, ",\"stdin\":");
    out_json_string(&body, in->buf, in->len);
    snprintf(num, sizeof num, ",\"deadline\":%.17g,\"expires\":%.6f,\"elapsed\":%.6f}", pl->timeout,
             (double)now.tv_sec + (double)now.tv_nsec / 1e9 + pl->timeout,
             runnable_before + monotonic() - clock_start);
    out_str(&body, num);
    if (body.failed) {
        req->failed = 1;
        free(body.buf);
        return;
    }
    hl = snprintf(head, sizeof head,
                  "POST /v1/cni HTTP/1.1\r\nHost: istio-cni-agent\r\nContent-Type: application/json\r\n"
                  "Content-Length: %zu\r\nConnection: close\r\n\r\n",
                  body.len);
    out_put(req, head, (size_t)hl);
    out_put(req, body.buf, body.len);
    free(body.buf);
}

/* The agent did not answer: the plugin takes this ADD to the API server (its direct path). */
static void plan_direct(const struct add_plan *pl, struct direct_add *direct)
{
    if (pl->ref.nsl >= sizeof direct->ns || pl->ref.nl >= sizeof direct->name)
        return;
    memcpy(direct->run_dir, pl->sock, pl->run_dir_len);
    direct->run_dir_len = pl->run_dir_len;
    memcpy(direct->ns, pl->ref.ns, pl->ref.nsl);
    direct->nsl = pl->ref.nsl;
    memcpy(direct->name, pl->ref.name, pl->ref.nl);
    direct->nl = pl->ref.nl;
    direct->planned = 1;
}

enum front_outcome agent_add(const struct bytes *in, const char *versions, const char *sock_name,
                             struct exchange *x, struct direct_add *direct)
{
    struct jdoc netconf, ans;
    struct add_plan pl;
    struct out req = {.max = 3u << 20}, res = {.max = 8u << 20};
    const char *body;
    size_t blen;
    int result;
    enum front_outcome outcome = FRONT_HAND_OVER;

    if (!env_ok(getenv("CNI_CONTAINERID"), 1) || !env_ok(getenv("CNI_NETNS"), 1) ||
        !env_ok(getenv("CNI_IFNAME"), 1) || !env_ok(getenv("CNI_PATH"), 1) || !env_ok(getenv("CNI_ARGS"), 0))
        return FRONT_HAND_OVER;
    if (in->len == 0 || in->len > FRONT_MAX_REQUEST_STDIN || !utf8_valid(in->buf, in->len))
        return FRONT_HAND_OVER;
    if (json_parse(&netconf, in->buf, in->len) != 0 || plan_add(&netconf, versions, sock_name, &pl) != 0 ||
        !netns_ok(getenv("CNI_NETNS"))) {
        json_free(&netconf);
        return FRONT_HAND_OVER;
    }
    build_request(&req, in, &pl);
    if (req.failed) {
        free(req.buf);
        json_free(&netconf);
        return FRONT_HAND_OVER;
    }
    exchange(&pl, &req, x);
    free(req.buf);
    if (x->connect_result != FX_OK)
        plan_direct(&pl, direct);
    if (x->connect_result == ENOENT) { /* no socket: the plugin's own "agent absent" check */
        json_free(&netconf);
        return FRONT_HAND_OVER;
    }
    outcome = FRONT_EXCHANGED;
    body = plain_200_body(x, &blen);
    if (body != NULL && json_parse(&ans, body, blen) == 0) {
        result = happy_result(&netconf, &pl, &ans);
        if (result >= 0 && json_write(&res, &ans, result) == 0) {
            out_put(&res, "\n", 1);
            if (!res.failed)
                outcome = write_stdout(res.buf, res.len) == 0 ? FRONT_DONE : FRONT_STDOUT_FAILED;
        }
    }
    if (body != NULL)
        json_free(&ans);
    free(res.buf);
    json_free(&netconf);
    return outcome;
}
