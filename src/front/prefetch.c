/* The front's prefetch of the direct path's pod GET (see prefetch.h for the contract). */
#define _GNU_SOURCE
#include "prefetch.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "json.h"

/* The plugin's own TLS client, compiled in: the same profile, checks and session handling.
 * The front uses its exchange only (no threads). */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-function"
#pragma GCC diagnostic ignored "-Wsign-compare"
#pragma GCC diagnostic ignored "-Wunused-parameter"
#include "../istio_cni/_tlsget.h"
#pragma GCC diagnostic pop

#define PREFETCH_MAX_TIMEOUT 30.0
#define PREFETCH_MAX_CAP (64u << 20)

/* Printable ASCII or CR/LF only (what an HTTP request head and an IP literal hold)? */
static int request_text(const char *s, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (!((c >= 0x20 && c < 0x7f) || c == '\r' || c == '\n'))
            return 0;
    }
    return 1;
}

/* A JSON string member without NUL bytes (and, with ascii, request_text); null allowed when
 * nullable (then *s = NULL). 0 ok, -1 not. */
static int str_member(const struct jdoc *d, const char *key, int nullable, int ascii, const char **s, size_t *len)
{
    int m = json_member(d, 0, key);
    *s = NULL, *len = 0;
    if (m >= 0 && d->nodes[m].type == J_NULL && nullable)
        return 0;
    if (m < 0 || d->nodes[m].type != J_STR || memchr(d->nodes[m].s, '\0', d->nodes[m].len) != NULL ||
        (ascii && !request_text(d->nodes[m].s, d->nodes[m].len)))
        return -1;
    *s = d->nodes[m].s, *len = d->nodes[m].len;
    return 0;
}

/* A number member as a double (integers: only), -1 if absent or not a number. */
static int num_member(const struct jdoc *d, const char *key, int integer, double *v)
{
    char text[72];
    int m = json_member(d, 0, key);
    if (m < 0 || !(d->nodes[m].type == J_INT || (!integer && d->nodes[m].type == J_FLOAT)) ||
        d->nodes[m].len >= sizeof text)
        return -1;
    memcpy(text, d->nodes[m].s, d->nodes[m].len);
    text[d->nodes[m].len] = '\0';
    *v = strtod(text, NULL);
    return isfinite(*v) ? 0 : -1;
}

static const char *const description_keys[] = {"version", "host", "port", "ca_file", "ca_pem", "session_file",
                                                "cap", "timeout", "request", "files"};

/* A JSON integer's exact value (no sign, at most 2^64 - 1); 0 ok, -1 not. */
static int exact_uint(const struct jnode *n, unsigned long long *v)
{
    char text[32], *end;
    if (n->type != J_INT || n->len == 0 || n->len >= sizeof text || n->s[0] == '-')
        return -1;
    memcpy(text, n->s, n->len);
    text[n->len] = '\0';
    errno = 0;
    *v = strtoull(text, &end, 10);
    return errno == 0 && *end == '\0' ? 0 : -1;
}

/* Every file the exchange was described from is still the one it was ([path, st_dev, st_ino,
 * st_size, st_mtime_ns] each, as Python's os.stat gives them): a kubeconfig, token or CA file
 * replaced since (a rotated token, another API server) means no GET with what the description
 * holds. 0 all unchanged, -1 not. */
static int files_unchanged(const struct jdoc *d)
{
    int files = json_member(d, 0, "files");
    if (files < 0 || d->nodes[files].type != J_ARR || d->nodes[files].count < 1)
        return -1;
    for (int f = d->nodes[files].first; f >= 0; f = d->nodes[f].next) {
        unsigned long long want[4];
        char path[PATH_MAX];
        struct stat st;
        int k = d->nodes[f].first, i = 0;
        if (d->nodes[f].type != J_ARR || d->nodes[f].count != 5 || d->nodes[k].type != J_STR ||
            d->nodes[k].len == 0 || d->nodes[k].len >= sizeof path || memchr(d->nodes[k].s, '\0', d->nodes[k].len))
            return -1;
        memcpy(path, d->nodes[k].s, d->nodes[k].len);
        path[d->nodes[k].len] = '\0';
        for (k = d->nodes[k].next; k >= 0; k = d->nodes[k].next, i++)
            if (exact_uint(&d->nodes[k], &want[i]) != 0)
                return -1;
        if (stat(path, &st) != 0 || (unsigned long long)st.st_dev != want[0] ||
            (unsigned long long)st.st_ino != want[1] || (unsigned long long)st.st_size != want[2] ||
            (unsigned long long)st.st_mtim.tv_sec * 1000000000ULL + (unsigned long long)st.st_mtim.tv_nsec != want[3])
            return -1;
    }
    return 0;
}

/* The exchange the description describes, for the pod ns/name, into g (its strings owned by
 * g, freed by the process's exit); 0, or -1 when the front does not take it exactly. */
static int plan_exchange(const struct jdoc *d, const char *ns, size_t nsl, const char *name, size_t nl, tg_get *g)
{
    const char *host, *ca_file, *ca_pem, *session, *part[3];
    size_t hl, cfl, cpl, sl, pl[3], members = 0;
    double version, port, cap, timeout;
    int req;

    if (d->nodes[0].type != J_OBJ)
        return -1;
    for (int k = d->nodes[0].first; k >= 0; k = d->nodes[k].next, members++) {
        int known = 0;
        for (size_t i = 0; i < sizeof description_keys / sizeof description_keys[0]; i++)
            known |= json_member(d, 0, description_keys[i]) == k;
        if (!known)
            return -1; /* a field this front does not know: not the exchange it would make */
    }
    if (num_member(d, "version", 1, &version) != 0 || version != 1 ||
        str_member(d, "host", 0, 1, &host, &hl) != 0 || hl == 0 || hl >= sizeof g->ip ||
        num_member(d, "port", 1, &port) != 0 || !(port > 0 && port < 65536) ||
        str_member(d, "ca_file", 1, 0, &ca_file, &cfl) != 0 || str_member(d, "ca_pem", 1, 0, &ca_pem, &cpl) != 0 ||
        (ca_file != NULL && ca_pem != NULL) || (ca_file != NULL && cfl == 0) ||
        str_member(d, "session_file", 0, 0, &session, &sl) != 0 || sl == 0 ||
        num_member(d, "cap", 1, &cap) != 0 || !(cap > 0 && cap <= PREFETCH_MAX_CAP) ||
        num_member(d, "timeout", 0, &timeout) != 0 || !(timeout > 0 && timeout <= PREFETCH_MAX_TIMEOUT))
        return -1;
    if (files_unchanged(d) != 0)
        return -1;
    req = json_member(d, 0, "request");
    if (req < 0 || d->nodes[req].type != J_ARR || d->nodes[req].count != 3)
        return -1;
    for (int k = d->nodes[req].first, i = 0; k >= 0; k = d->nodes[k].next, i++) {
        if (d->nodes[k].type != J_STR || !request_text(d->nodes[k].s, d->nodes[k].len))
            return -1;
        part[i] = d->nodes[k].s, pl[i] = d->nodes[k].len;
    }
    memcpy(g->ip, host, hl);
    g->ip[hl] = '\0';
    if (inet_pton(AF_INET, g->ip, g->addr) == 1)
        g->family = AF_INET;
    else if (inet_pton(AF_INET6, g->ip, g->addr) == 1)
        g->family = AF_INET6;
    else
        return -1;
    g->port = (int)port;
    g->cap = (size_t)cap;
    g->deadline = tg_now() + timeout;
    g->request_len = pl[0] + nsl + pl[1] + nl + pl[2];
    g->request = malloc(g->request_len + 1);
    g->session_file = strndup(session, sl);
    if (g->request == NULL || g->session_file == NULL)
        return -1;
    memcpy(g->request, part[0], pl[0]);
    memcpy(g->request + pl[0], ns, nsl);
    memcpy(g->request + pl[0] + nsl, part[1], pl[1]);
    memcpy(g->request + pl[0] + nsl + pl[1], name, nl);
    memcpy(g->request + pl[0] + nsl + pl[1] + nl, part[2], pl[2]);
    g->request[g->request_len] = '\0';
    if (ca_file != NULL && (g->ca_file = strndup(ca_file, cfl)) == NULL)
        return -1;
    if (ca_pem != NULL) {
        if ((g->ca_pem = strndup(ca_pem, cpl)) == NULL)
            return -1;
        g->ca_len = cpl;
    }
    return 0;
}

static void put_str_or_null(struct out *o, const char *s, size_t len)
{
    if (s == NULL)
        out_str(o, "null");
    else
        out_json_string(o, s, len);
}

/* The params the plugin compares with its own HttpsGet arguments (see prefetch.h). */
static void write_params(struct out *o, const tg_get *g)
{
    char num[64];
    out_str(o, "{\"host\":");
    out_json_string(o, g->ip, strlen(g->ip));
    snprintf(num, sizeof num, ",\"port\":%d,\"request\":", g->port);
    out_str(o, num);
    out_json_string(o, g->request, g->request_len);
    out_str(o, ",\"ca_file\":");
    put_str_or_null(o, g->ca_file, g->ca_file ? strlen(g->ca_file) : 0);
    out_str(o, ",\"ca_pem\":");
    put_str_or_null(o, g->ca_pem, g->ca_len);
    out_str(o, ",\"session_file\":");
    out_json_string(o, g->session_file, strlen(g->session_file));
    snprintf(num, sizeof num, ",\"cap\":%zu,\"deadline\":%.17g}", g->cap, g->deadline);
    out_str(o, num);
}

/* The child: the exchange, then its outcome appended to the record; never returns. */
static void run_child(tg_get *g, int record, const char *lib_dir)
{
    unsigned char head[sizeof PREFETCH_OUTCOME_MAGIC - 1 + 16 + 6 * 8 + 8];
    int32_t ints[3];
    uint32_t msg_len;
    uint64_t answer_len;
    size_t h = sizeof PREFETCH_OUTCOME_MAGIC - 1;

    g->at[TG_AT_START] = tg_now();
    tg_lib_dir = lib_dir;
    tg_exchange(g); /* reports a libssl it cannot use as TG_SETUP, as HttpsGet would */
    g->at[TG_AT_DONE] = tg_now();
    ints[0] = g->kind, ints[1] = g->err, ints[2] = g->resumed;
    msg_len = (uint32_t)strnlen(g->msg, sizeof g->msg);
    answer_len = g->kind == TG_OK ? g->len : 0;
    memcpy(head, PREFETCH_OUTCOME_MAGIC, h);
    memcpy(head + h, ints, sizeof ints); /* little endian: the hosts this runs on */
    memcpy(head + h + 12, &msg_len, 4);
    memcpy(head + h + 16, g->at, 6 * 8);
    memcpy(head + h + 16 + 48, &answer_len, 8);
    /* The record's offset is where the front left it, after the params: the parent execs,
     * and the plugin reads with pread. */
    if (tg_write_all(record, head, sizeof head) && tg_write_all(record, (const unsigned char *)g->msg, msg_len) &&
        answer_len > 0)
        (void)tg_write_all(record, (const unsigned char *)g->buf, (size_t)answer_len);
    _exit(0); /* the done pipe's write end closes with us */
}

int prefetch_start(const char *run_dir, size_t run_dir_len, const char *ns, size_t nsl, const char *name,
                   size_t nl, const char *lib_dir, char *env, size_t cap)
{
    static char text[PREFETCH_MAX_DESCRIPTION];
    char path[PATH_MAX];
    ssize_t len;
    struct jdoc d;
    static tg_get g; /* the child's; the parent execs right after */
    struct out params = {.max = 2u << 20};
    int record = -1, done[2] = {-1, -1}, rc = -1;
    uint64_t plen;
    pid_t parent = getpid(), pid;

    if (lib_dir == NULL || run_dir_len + sizeof PREFETCH_NAME + 1 > sizeof path)
        return -1;
    memcpy(path, run_dir, run_dir_len);
    path[run_dir_len] = '/';
    memcpy(path + run_dir_len + 1, PREFETCH_NAME, sizeof PREFETCH_NAME);
    len = tg_read_private(path, (unsigned char *)text, 0, sizeof text); /* tg_session_load's checks */
    if (len < 0 || !utf8_valid(text, (size_t)len) || json_parse(&d, text, (size_t)len) != 0)
        return -1;
    memset(&g, 0, sizeof g);
    g.done_fd = -1;
    if (plan_exchange(&d, ns, nsl, name, nl, &g) == 0) {
        write_params(&params, &g);
        plen = params.len;
        record = memfd_create("istio-cni-prefetch", 0); /* no CLOEXEC: the plugin reads it */
        if (!params.failed && record >= 0 &&
            tg_write_all(record, (const unsigned char *)PREFETCH_MAGIC, sizeof PREFETCH_MAGIC - 1) &&
            tg_write_all(record, (const unsigned char *)&plen, 8) &&
            tg_write_all(record, (const unsigned char *)params.buf, params.len) && pipe(done) == 0 &&
            snprintf(env, cap, "%s=%d,%d,", PREFETCH_ENV, record, done[0]) < (int)cap) {
            size_t used = strlen(env);
            pid = fork();
            if (pid == 0) {
                int null = open("/dev/null", O_RDWR | O_CLOEXEC);
                /* Gone with the plugin; none of the runtime's pipes kept open. */
                if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 || getppid() != parent || null < 0 ||
                    dup2(null, STDIN_FILENO) < 0 || dup2(null, STDOUT_FILENO) < 0 || dup2(null, STDERR_FILENO) < 0)
                    _exit(0);
                close(done[0]);
                run_child(&g, record, lib_dir);
            }
            if (pid > 0 && snprintf(env + used, cap - used, "%d", (int)pid) < (int)(cap - used))
                rc = 0;
            else if (pid > 0)
                kill(pid, SIGKILL); /* no room to name it: no prefetch (the plugin's exit reaps it) */
        }
    }
    if (done[1] >= 0)
        close(done[1]);
    if (rc != 0) {
        if (done[0] >= 0)
            close(done[0]);
        if (record >= 0)
            close(record);
    }
    free(params.buf);
    json_free(&d);
    return rc;
}
