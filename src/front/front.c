/* istio-cni front: the executable kubelet/containerd exec as <bin>/istio-cni.
 *
 * It replaces a `#!/bin/sh` launcher (fork of a shell, its init, then exec): it execs the
 * bundled interpreter directly, with the launcher's exact argv and environment semantics:
 *
 *     LD_LIBRARY_PATH=<bundle>/lib  <bundle>/bin/python3.X -I -S -c <code> [args...]
 *
 * where every other environment entry is passed on unchanged (an inherited LD_LIBRARY_PATH is
 * replaced, as the shell's assignment + export did). The paths and the code are not compiled in:
 * the installer copies this executable into the host's CNI bin dir and writes them into
 * `istio_cni_front_config` in its copy (installer/istio_cni_installer/front.py), so one build
 * serves every bundle location. An unconfigured or broken front prints one CNI error document
 * (code 999) and exits 1: stdout is the protocol, and no pod starts without the plugin.
 *
 * The agent path (agent.c): for an ADD whose every input is ordinary, the front itself
 * sends the request the plugin's agent client would send to the node agent and, when the answer
 * is the plain success it can check (the prevResult handed on, in the caller's cniVersion),
 * prints it and exits: no interpreter at all. Everything else is handed over to the plugin with
 * the stdin it read replayed and the agent exchange (if there was one) recorded, so the plugin
 * applies its own checks and failure policy to the very same bytes, without asking again.
 *
 * The direct path (prefetch.c): when that agent does not answer, the plugin will GET its pod
 * from the API server; if the plugin described that exchange after an earlier one, the front
 * forks a child that makes it now, while the interpreter starts, and hands its record over.
 *
 * Runs as root on every node: every read bounded, every call checked, nothing echoed.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "agent.h"
#include "prefetch.h"

#define FRONT_CONFIG_SIZE 4096
#define FRONT_MARKER "\n#istio-cni-front-config-v1#\n"
#define ERROR_VERSION "1.1.0" /* the version __main__._broken_install answers in */

/* The marker, then NUL-terminated "key=value" entries, then an empty entry, zero padded.
 * Unpatched (the build's copy), it holds the marker only. */
char istio_cni_front_config[FRONT_CONFIG_SIZE] = FRONT_MARKER;

extern char **environ;

static const char *config_block(void)
{
    const char *p = istio_cni_front_config;
    /* Rewritten after compilation: the compiler must not assume the initializer's value. */
    __asm__ volatile("" : "+r"(p));
    return p;
}

/* The value of `key` in the config block, or NULL. Never reads past the block. */
static const char *config_get(const char *key)
{
    const char *block = config_block();
    size_t klen = strlen(key), off = sizeof(FRONT_MARKER) - 1;

    /* The marker is not compared: its text must appear once in this executable (the
     * installer finds the block by it), and the installer writes it back unchanged. */
    while (off < FRONT_CONFIG_SIZE) {
        const char *entry = block + off;
        const char *end = memchr(entry, '\0', FRONT_CONFIG_SIZE - off);
        if (end == NULL || end == entry)
            return NULL; /* unterminated, or the empty entry that ends the list */
        if ((size_t)(end - entry) > klen && memcmp(entry, key, klen) == 0 && entry[klen] == '=')
            return entry + klen + 1;
        off += (size_t)(end - entry) + 1;
    }
    return NULL;
}

/* Write all of buf to fd; 0 or -1. */
static int write_all(int fd, const char *buf, size_t len)
{
    while (len > 0) {
        ssize_t n = write(fd, buf, len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        buf += n;
        len -= (size_t)n;
    }
    return 0;
}

/* JSON-escape s into out (capacity cap, always NUL-terminated); truncates at a character
 * boundary of the escaped form. Bytes >= 0x80 are copied: the callers pass ASCII text or
 * paths, and a non-UTF-8 path byte is replaced by '?' so the document stays valid JSON. */
static void json_escape_into(char *out, size_t cap, const char *s)
{
    static const char hex[] = "0123456789abcdef";
    size_t o = 0;

    for (; *s != '\0'; s++) {
        unsigned char c = (unsigned char)*s;
        char esc[7];
        size_t n;
        if (c == '"' || c == '\\') {
            esc[0] = '\\', esc[1] = (char)c, n = 2;
        } else if (c < 0x20) {
            esc[0] = '\\', esc[1] = 'u', esc[2] = '0', esc[3] = '0';
            esc[4] = hex[c >> 4], esc[5] = hex[c & 15], n = 6;
        } else if (c >= 0x80) {
            esc[0] = '?', n = 1;
        } else {
            esc[0] = (char)c, n = 1;
        }
        if (o + n >= cap)
            break;
        memcpy(out + o, esc, n);
        o += n;
    }
    out[o] = '\0';
}

/* One CNI error document (code 999) on stdout, then exit 1. */
static void fail(const char *msg, const char *details)
{
    char m[512], d[1024], doc[1700];
    int n;

    json_escape_into(m, sizeof m, msg);
    json_escape_into(d, sizeof d, details);
    n = snprintf(doc, sizeof doc, "{\"cniVersion\":\"" ERROR_VERSION "\",\"code\":999,\"msg\":\"%s\",\"details\":\"%s\"}\n",
                 m, d);
    if (n > 0 && (size_t)n < sizeof doc)
        (void)write_all(STDOUT_FILENO, doc, (size_t)n);
    _exit(1);
}

/* "PREFETCH_ENV=<record>,<done>" when the front started the pod GET (prefetch.h), else "". */
static char prefetch_var[64];

/* The launcher's environment: every entry but LD_LIBRARY_PATH, FRONT_EXCHANGE_ENV and
 * PREFETCH_ENV (only the front sets those two), then ours (the exchange record's fd, when
 * there is one: exchange_fd >= 0; the prefetch's fds, when there is one). */
static char **launch_environment(const char *lib, int exchange_fd)
{
    static const char name[] = "LD_LIBRARY_PATH=";
    static const char xname[] = FRONT_EXCHANGE_ENV "=";
    static const char pname[] = PREFETCH_ENV "=";
    size_t n = 0, k = 0, len = strlen(lib);
    char **env, *ours;

    while (environ != NULL && environ[n] != NULL)
        n++;
    env = calloc(n + 4, sizeof *env);
    ours = malloc(sizeof name + len);
    if (env == NULL || ours == NULL)
        fail("internal error: the istio-cni front is out of memory", "");
    memcpy(ours, name, sizeof name - 1);
    memcpy(ours + sizeof name - 1, lib, len + 1);
    for (size_t i = 0; i < n; i++)
        if (strncmp(environ[i], name, sizeof name - 1) != 0 && strncmp(environ[i], xname, sizeof xname - 1) != 0 &&
            strncmp(environ[i], pname, sizeof pname - 1) != 0)
            env[k++] = environ[i];
    env[k++] = ours;
    if (exchange_fd >= 0) {
        static char xvar[sizeof xname + 16];
        snprintf(xvar, sizeof xvar, "%s%d", xname, exchange_fd);
        env[k++] = xvar;
    }
    if (prefetch_var[0] != '\0')
        env[k++] = prefetch_var;
    env[k] = NULL;
    return env;
}

/* Exec the bundled interpreter as the shell launcher did; returns only by failing. */
static void exec_plugin(int argc, char **argv, int exchange_fd)
{
    const char *python = config_get("python"), *lib = config_get("lib"), *code = config_get("code");
    char **args;
    char details[600];

    if (python == NULL || lib == NULL || code == NULL)
        fail("internal error: the istio-cni front is not configured",
             "this executable is the build's copy; install-cni writes a configured one into the CNI bin dir");
    args = calloc((size_t)argc + 5, sizeof *args);
    if (args == NULL)
        fail("internal error: the istio-cni front is out of memory", "");
    args[0] = (char *)python; /* the interpreter finds its stdlib from its own path */
    args[1] = "-I";
    args[2] = "-S";
    args[3] = "-c";
    args[4] = (char *)code;
    for (int i = 1; i < argc; i++)
        args[4 + i] = argv[i];
    execve(python, args, launch_environment(lib, exchange_fd));
    snprintf(details, sizeof details, "%s: %s", python, strerror(errno));
    fail("internal error: the istio-cni plugin bundle cannot be executed", details);
}

/* Hand the ADD over to the plugin: stdin replayed from what the front read (when it read
 * any: `in` not NULL), the agent exchange recorded (when there was one: `x` not NULL). */
static void hand_over(int argc, char **argv, const struct bytes *in, const struct exchange *x)
{
    int exchange_fd = -1;

    if (in != NULL && replay_stdin(in) != 0)
        fail("internal error: the istio-cni front cannot hand stdin over to the plugin", strerror(errno));
    if (x != NULL) {
        exchange_fd = record_exchange(x);
        if (exchange_fd < 0)
            fail("internal error: the istio-cni front cannot hand the agent's answer over to the plugin",
                 strerror(errno));
    }
    exec_plugin(argc, argv, exchange_fd);
}

int main(int argc, char **argv)
{
    struct bytes in = {0};
    struct exchange x;
    struct direct_add direct;
    enum front_outcome outcome;
    const char *versions = config_get("versions"), *sock_name = config_get("agent_socket_name");
    int rc;

    front_clock_start();
    if (argc != 1 || versions == NULL || sock_name == NULL || !front_wants(getenv("CNI_COMMAND")))
        exec_plugin(argc, argv, -1); /* not an ADD, or a front built without the agent path */
    rc = read_stdin(&in);
    if (rc < 0)
        exec_plugin(argc, argv, -1); /* nothing read: the plugin meets the same stdin */
    if (rc > 0)
        hand_over(argc, argv, &in, NULL);
    memset(&x, 0, sizeof x);
    memset(&direct, 0, sizeof direct);
    outcome = agent_add(&in, versions, sock_name, &x, &direct);
    if (direct.planned) /* the agent did not answer: the plugin will GET its pod */
        (void)prefetch_start(direct.run_dir, direct.run_dir_len, direct.ns, direct.nsl, direct.name, direct.nl,
                             config_get("lib"), prefetch_var, sizeof prefetch_var); /* none: the plugin GETs */
    switch (outcome) {
    case FRONT_DONE:
    case FRONT_STDOUT_FAILED:
        free(x.raw);
        free(in.buf);
        return outcome == FRONT_DONE ? 0 : 1;
    case FRONT_EXCHANGED:
        hand_over(argc, argv, &in, &x);
        break;
    default:
        hand_over(argc, argv, &in, NULL);
    }
    return 1;
}
