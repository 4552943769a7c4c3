/* One HTTPS exchange (connect, TLS handshake, request, the whole answer) on a C thread.
 *
 * The direct path's pod GET. Done by Python's `_ssl` it costs the ADD ~4 ms before the first
 * byte reaches the API server: `import _ssl` (~1.9 ms: its module set-up builds dicts of
 * every OpenSSL error code), the context with its CA (~1.2 ms) and waiting for OpenSSL's
 * first-use set-up. Here the same OpenSSL does the same work on another core, without the
 * GIL, while the interpreter imports what the ADD needs after the answer; the main thread
 * only hands the request over and later reads the answer with `http1` as before.
 * (benchmarks/RESULTS.md, "The pod GET on a C thread".)
 *
 * libssl.so.3 is loaded with dlopen, as `_ssl` loads it, so that importing `_fastpath`
 * costs nothing until an ADD needs TLS, and the module builds without OpenSSL's headers:
 * the few types are opaque and the constants below are OpenSSL 3's (stable ABI within 3.x).
 *
 * The TLS profile is upstream CPython's `_ssl._SSLContext(PROTOCOL_TLS_CLIENT)` (TLS >= 1.2,
 * CPython's cipher string, its options and verify flags; tests/unit/test_tlsget.py compares
 * them with the interpreter's own `_ssl`): certificate chain, then the API server's IP
 * against the certificate's IP SANs, both checked by OpenSSL; unless the kubeconfig says
 * insecure-skip-tls-verify. Hosts are IP literals only (what the installer writes); a DNS
 * name takes the Python path, which bounds name resolution.
 *
 * Every wait is bounded by the caller's deadline (CLOCK_MONOTONIC, time.monotonic's clock),
 * and the answer by `cap` bytes. Reading a CA, certificate or key file is not (nor is it on
 * the Python path): the caller stops waiting at the deadline and leaves the thread behind.
 */

#include <arpa/inet.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* OpenSSL 3.x ABI constants (openssl/ssl.h, x509_vfy.h, err.h, pem.h). */
#define TG_SSL_ERROR_SSL 1
#define TG_SSL_ERROR_WANT_READ 2
#define TG_SSL_ERROR_WANT_WRITE 3
#define TG_SSL_ERROR_SYSCALL 5
#define TG_SSL_ERROR_ZERO_RETURN 6
#define TG_SSL_CTRL_MODE 33
#define TG_SSL_CTRL_SET_MIN_PROTO_VERSION 123
#define TG_SSL_CTRL_GET_MIN_PROTO_VERSION 130
#define TG_TLS1_2_VERSION 0x0303
#define TG_TLS1_3_VERSION 0x0304
#define TG_SSL_VERIFY_NONE 0
#define TG_SSL_VERIFY_PEER 1
#define TG_SSL_VERIFY_FAIL_IF_NO_PEER_CERT 2
#define TG_SSL_FILETYPE_PEM 1
#define TG_SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER 0x2
#define TG_SSL_MODE_AUTO_RETRY 0x4
#define TG_X509_V_OK 0
#define TG_X509_V_FLAG_TRUSTED_FIRST 0x8000
#define TG_X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS 0x4
#define TG_ERR_LIB_PEM 9
#define TG_ERR_LIB_SSL 20
#define TG_PEM_R_NO_START_LINE 108
#define TG_SSL_R_UNEXPECTED_EOF_WHILE_READING 294
/* ERR_GET_LIB / ERR_GET_REASON of OpenSSL 3 (system errors carry the top bit). */
#define TG_ERR_SYSTEM_FLAG ((unsigned long)1 << 31)
#define TG_ERR_LIB(e) (((e) & TG_ERR_SYSTEM_FLAG) ? 2 : (int)(((e) >> 23) & 0xFF))
#define TG_ERR_REASON(e) (((e) & TG_ERR_SYSTEM_FLAG) ? (int)((e) & 0x7FFFFFFF) : (int)((e) & 0x7FFFFF))

/* CPython 3.11's _ssl._SSLContext(PROTOCOL_TLS_CLIENT) (Modules/_ssl.c, upstream build):
 * SSL_OP_ALL without DONT_INSERT_EMPTY_FRAGMENTS and LEGACY_SERVER_CONNECT, plus NO_SSLv3,
 * NO_COMPRESSION, CIPHER_SERVER_PREFERENCE (the DH/ECDH "single use" bits are 0 in 3.x). */
#define TG_OPTIONS (0x80000000UL | 0x00000040UL | 0x00000010UL | 0x02000000UL | 0x00020000UL | 0x00400000UL)
#define TG_OPTIONS_CLEARED 0x00000004UL /* SSL_OP_LEGACY_SERVER_CONNECT */
#define TG_CIPHERS "@SECLEVEL=2:ECDH+AESGCM:ECDH+CHACHA20:ECDH+AES:DHE+AES:!aNULL:!eNULL:!aDSS:!SHA1:!AESCCM"
static const char tg_sid_ctx[] = "Python";

typedef struct {
    const void *(*TLS_client_method)(void);
    void *(*SSL_CTX_new)(const void *);
    void (*SSL_CTX_free)(void *);
    long (*SSL_CTX_ctrl)(void *, int, long, void *);
    uint64_t (*SSL_CTX_set_options)(void *, uint64_t);
    uint64_t (*SSL_CTX_clear_options)(void *, uint64_t);
    uint64_t (*SSL_CTX_get_options)(const void *);
    int (*SSL_CTX_set_cipher_list)(void *, const char *);
    void (*SSL_CTX_set_verify)(void *, int, void *);
    int (*SSL_CTX_get_verify_mode)(const void *);
    void *(*SSL_CTX_get_cert_store)(const void *);
    int (*SSL_CTX_load_verify_locations)(void *, const char *, const char *);
    int (*SSL_CTX_set_default_verify_paths)(void *);
    int (*SSL_CTX_use_certificate_chain_file)(void *, const char *);
    int (*SSL_CTX_use_PrivateKey_file)(void *, const char *, int);
    int (*SSL_CTX_check_private_key)(const void *);
    void *(*SSL_CTX_get0_param)(void *);
    int (*SSL_CTX_set_session_id_context)(void *, const unsigned char *, unsigned int);
    void (*SSL_CTX_set_post_handshake_auth)(void *, int);
    void *(*SSL_CTX_get_ciphers)(const void *);
    const char *(*SSL_CIPHER_get_name)(const void *);
    void *(*SSL_new)(void *);
    void (*SSL_free)(void *);
    int (*SSL_set_fd)(void *, int);
    void *(*SSL_get0_param)(void *);
    int (*SSL_connect)(void *);
    int (*SSL_write)(void *, const void *, int);
    int (*SSL_read)(void *, void *, int);
    int (*SSL_get_error)(const void *, int);
    long (*SSL_get_verify_result)(const void *);
    int (*SSL_set_session)(void *, void *);
    void *(*SSL_get1_session)(void *);
    int (*SSL_session_reused)(const void *);
    void (*SSL_SESSION_free)(void *);
    void *(*SSL_SESSION_dup)(const void *);
    int (*i2d_SSL_SESSION)(const void *, unsigned char **);
    void *(*d2i_SSL_SESSION)(void **, const unsigned char **, long);
    int (*SSL_SESSION_is_resumable)(const void *);
    int (*SSL_SESSION_get_protocol_version)(const void *);
    void *(*EVP_MD_CTX_new)(void);
    void (*EVP_MD_CTX_free)(void *);
    const void *(*EVP_sha256)(void);
    int (*EVP_DigestInit_ex)(void *, const void *, void *);
    int (*EVP_DigestUpdate)(void *, const void *, size_t);
    int (*EVP_DigestFinal_ex)(void *, unsigned char *, unsigned int *);
    int (*OPENSSL_sk_num)(const void *);
    void *(*OPENSSL_sk_value)(const void *, int);
    void *(*BIO_new_mem_buf)(const void *, int);
    int (*BIO_free)(void *);
    void *(*PEM_read_bio_X509)(void *, void **, void *, void *);
    int (*X509_STORE_add_cert)(void *, void *);
    void (*X509_free)(void *);
    unsigned long (*ERR_get_error)(void);
    unsigned long (*ERR_peek_last_error)(void);
    void (*ERR_clear_error)(void);
    void (*ERR_error_string_n)(unsigned long, char *, size_t);
    int (*X509_VERIFY_PARAM_set1_ip_asc)(void *, const char *);
    void (*X509_VERIFY_PARAM_set_hostflags)(void *, unsigned int);
    int (*X509_VERIFY_PARAM_set_flags)(void *, unsigned long);
    unsigned long (*X509_VERIFY_PARAM_get_flags)(const void *);
    const char *(*X509_verify_cert_error_string)(long);
} tg_api_t;

static tg_api_t tg_api;
static int tg_api_ok;
static pthread_once_t tg_api_once = PTHREAD_ONCE_INIT;

/* Where libssl.so.3 and libcrypto.so.3 come from: NULL, the dynamic linker's search (the
 * interpreter runs with the bundle's lib dir in LD_LIBRARY_PATH); the front, which runs
 * without it, names the bundle's lib dir (src/front/prefetch.c). */
static const char *tg_lib_dir;

static void tg_load(void)
{
    /* RTLD_NOW as CPython loads extension modules (and with them libssl): the same binding
     * work. Never closed: `_ssl`, if loaded later, links this very library. dlsym on its
     * handle also finds libcrypto's symbols (a dependency of libssl). */
    void *h;
    if (tg_lib_dir != NULL) {
        /* libcrypto first, by path: libssl's dependency on it then names this copy. */
        char path[PATH_MAX];
        if (snprintf(path, sizeof path, "%s/libcrypto.so.3", tg_lib_dir) >= (int)sizeof path ||
            dlopen(path, RTLD_NOW | RTLD_LOCAL) == NULL)
            return;
        if (snprintf(path, sizeof path, "%s/libssl.so.3", tg_lib_dir) >= (int)sizeof path)
            return;
        h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    } else {
        h = dlopen("libssl.so.3", RTLD_NOW | RTLD_LOCAL);
    }
    if (h == NULL)
        return;
#define TG_SYM(name)                                          \
    do {                                                      \
        *(void **)&tg_api.name = dlsym(h, #name);             \
        if (tg_api.name == NULL)                              \
            return;                                           \
    } while (0)
    TG_SYM(TLS_client_method);
    TG_SYM(SSL_CTX_new);
    TG_SYM(SSL_CTX_free);
    TG_SYM(SSL_CTX_ctrl);
    TG_SYM(SSL_CTX_set_options);
    TG_SYM(SSL_CTX_clear_options);
    TG_SYM(SSL_CTX_get_options);
    TG_SYM(SSL_CTX_set_cipher_list);
    TG_SYM(SSL_CTX_set_verify);
    TG_SYM(SSL_CTX_get_verify_mode);
    TG_SYM(SSL_CTX_get_cert_store);
    TG_SYM(SSL_CTX_load_verify_locations);
    TG_SYM(SSL_CTX_set_default_verify_paths);
    TG_SYM(SSL_CTX_use_certificate_chain_file);
    TG_SYM(SSL_CTX_use_PrivateKey_file);
    TG_SYM(SSL_CTX_check_private_key);
    TG_SYM(SSL_CTX_get0_param);
    TG_SYM(SSL_CTX_set_session_id_context);
    TG_SYM(SSL_CTX_set_post_handshake_auth);
    TG_SYM(SSL_CTX_get_ciphers);
    TG_SYM(SSL_CIPHER_get_name);
    TG_SYM(SSL_new);
    TG_SYM(SSL_free);
    TG_SYM(SSL_set_fd);
    TG_SYM(SSL_get0_param);
    TG_SYM(SSL_connect);
    TG_SYM(SSL_write);
    TG_SYM(SSL_read);
    TG_SYM(SSL_get_error);
    TG_SYM(SSL_get_verify_result);
    TG_SYM(SSL_set_session);
    TG_SYM(SSL_get1_session);
    TG_SYM(SSL_session_reused);
    TG_SYM(SSL_SESSION_free);
    TG_SYM(SSL_SESSION_dup);
    TG_SYM(i2d_SSL_SESSION);
    TG_SYM(d2i_SSL_SESSION);
    TG_SYM(SSL_SESSION_is_resumable);
    TG_SYM(SSL_SESSION_get_protocol_version);
    TG_SYM(EVP_MD_CTX_new);
    TG_SYM(EVP_MD_CTX_free);
    TG_SYM(EVP_sha256);
    TG_SYM(EVP_DigestInit_ex);
    TG_SYM(EVP_DigestUpdate);
    TG_SYM(EVP_DigestFinal_ex);
    TG_SYM(OPENSSL_sk_num);
    TG_SYM(OPENSSL_sk_value);
    TG_SYM(BIO_new_mem_buf);
    TG_SYM(BIO_free);
    TG_SYM(PEM_read_bio_X509);
    TG_SYM(X509_STORE_add_cert);
    TG_SYM(X509_free);
    TG_SYM(ERR_get_error);
    TG_SYM(ERR_peek_last_error);
    TG_SYM(ERR_clear_error);
    TG_SYM(ERR_error_string_n);
    TG_SYM(X509_VERIFY_PARAM_set1_ip_asc);
    TG_SYM(X509_VERIFY_PARAM_set_hostflags);
    TG_SYM(X509_VERIFY_PARAM_set_flags);
    TG_SYM(X509_VERIFY_PARAM_get_flags);
    TG_SYM(X509_verify_cert_error_string);
#undef TG_SYM
    tg_api_ok = 1;
}

/* libssl loaded and every function found (once per process; callers block until then). */
static int tg_openssl(void)
{
    pthread_once(&tg_api_once, tg_load);
    return tg_api_ok;
}

static double tg_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* A client context with CPython's PROTOCOL_TLS_CLIENT settings (verification on), or NULL. */
static void *tg_context(void)
{
    void *ctx = tg_api.SSL_CTX_new(tg_api.TLS_client_method());
    if (ctx == NULL)
        return NULL;
    /* CERT_REQUIRED as CPython sets it (FAIL_IF_NO_PEER_CERT only matters to servers). */
    tg_api.SSL_CTX_set_verify(ctx, TG_SSL_VERIFY_PEER | TG_SSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL);
    tg_api.SSL_CTX_clear_options(ctx, TG_OPTIONS_CLEARED);
    tg_api.SSL_CTX_set_options(ctx, TG_OPTIONS);
    if (tg_api.SSL_CTX_ctrl(ctx, TG_SSL_CTRL_SET_MIN_PROTO_VERSION, TG_TLS1_2_VERSION, NULL) != 1 ||
        tg_api.SSL_CTX_set_cipher_list(ctx, TG_CIPHERS) != 1) {
        tg_api.SSL_CTX_free(ctx);
        return NULL;
    }
    tg_api.SSL_CTX_ctrl(ctx, TG_SSL_CTRL_MODE, TG_SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER | TG_SSL_MODE_AUTO_RETRY, NULL);
    tg_api.SSL_CTX_set_session_id_context(ctx, (const unsigned char *)tg_sid_ctx, sizeof(tg_sid_ctx));
    void *param = tg_api.SSL_CTX_get0_param(ctx);
    tg_api.X509_VERIFY_PARAM_set_flags(param, TG_X509_V_FLAG_TRUSTED_FIRST);
    tg_api.X509_VERIFY_PARAM_set_hostflags(param, TG_X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
    tg_api.SSL_CTX_set_post_handshake_auth(ctx, 0);
    return ctx;
}

/* The context the warm-up thread made, kept for the first exchange (it only adds the
 * kubeconfig's material): the lock is held while it is made, so an exchange that starts
 * meanwhile waits for it rather than making a second one on a cold library. */
static pthread_mutex_t tg_warm_lock = PTHREAD_MUTEX_INITIALIZER;
static void *tg_warm_ctx;
/* When the warm-up started, had libssl loaded and initialised, and had its context (tg_now();
 * 0: not reached), for the phase probe. */
static double tg_warm_at[3];

/* The warm-up thread's work (see _fastpath.pyx): OpenSSL loaded and its first context made. */
static void *tg_warm(void *arg)
{
    (void)arg;
    tg_warm_at[0] = tg_now();
    if (tg_openssl()) {
        tg_warm_at[1] = tg_now();
        pthread_mutex_lock(&tg_warm_lock);
        if (tg_warm_ctx == NULL)
            tg_warm_ctx = tg_context();
        pthread_mutex_unlock(&tg_warm_lock);
        tg_warm_at[2] = tg_now();
    }
    return NULL;
}

/* A fresh client context: the warm-up thread's if it is still unused, else a new one. */
static void *tg_take_context(void)
{
    pthread_mutex_lock(&tg_warm_lock);
    void *ctx = tg_warm_ctx;
    tg_warm_ctx = NULL;
    pthread_mutex_unlock(&tg_warm_lock);
    return ctx != NULL ? ctx : tg_context();
}

/* What failed, for the Python side to raise (kinds map to exception types in _fastpath.pyx). */
enum tg_kind {
    TG_OK = 0,
    TG_ERRNO,     /* a socket call failed: err holds errno */
    TG_TIMEOUT,   /* the deadline passed */
    TG_TLS,       /* the handshake or the TLS stream failed */
    TG_VERIFY,    /* the server's certificate did not verify (chain or IP) */
    TG_MATERIAL,  /* the kubeconfig's CA, certificate or key cannot be loaded */
    TG_TOO_LARGE, /* the answer exceeded cap bytes */
    TG_SETUP,     /* no usable libssl.so.3, no memory, no thread */
};

/* The exchange's steps, in order: what tg_get.at records (HttpsGet.steps() names them). */
enum tg_step {
    TG_AT_START,     /* the thread runs */
    TG_AT_CONTEXT,   /* it holds a client context (the warm-up's, waited for, or its own) */
    TG_AT_CONNECTED, /* trust as needed, TCP connected */
    TG_AT_HANDSHAKE, /* TLS handshake done (the last attempt's) */
    TG_AT_ANSWER,    /* the request sent, the answer's first bytes in */
    TG_AT_DONE,      /* the answer complete (or the failure known) */
    TG_STEPS
};

typedef struct tg_get {
    /* in (owned by the struct) */
    int family;
    unsigned char addr[16];
    int port;
    char ip[48]; /* the numeric host as text: the IP SAN checked */
    int insecure;
    char *ca_pem; /* PEM bytes (kubeconfig certificate-authority-data), or NULL */
    size_t ca_len;
    char *ca_file;   /* or NULL; neither: the system's default trust store */
    char *cert_file; /* client certificate chain (PEM), or NULL */
    char *key_file;  /* its key, or NULL (then in cert_file) */
    char *session_file; /* where the TLS session is kept between processes, or NULL (tg_session_*) */
    char *request;
    size_t request_len;
    double deadline;
    size_t cap;
    /* out */
    char *buf;
    size_t len;
    size_t room; /* allocated size of buf */
    int kind;
    int err;
    int resumed; /* the handshake resumed the kept session */
    char msg[400];
    /* when each step ended (tg_now(); 0: not reached), for the phase probe (benchmarks/) */
    double at[TG_STEPS];
    /* the thread and its end */
    int done_fd; /* eventfd written once the thread is done with everything but freeing */
    pthread_t thread;
    int started;
} tg_get;

/* Wait until fd is ready for events or the deadline: 1 ready, 0 deadline, -1 errno. Looks
 * once even when the deadline has passed (a zero timeout asks "ready now?"). */
static int tg_poll(int fd, short events, double deadline)
{
    for (;;) {
        double left = deadline - tg_now();
        int ms = left > 0 ? (int)(left * 1000.0) + 1 : 0;
        struct pollfd p = {.fd = fd, .events = events};
        int r = poll(&p, 1, ms);
        if (r > 0)
            return 1;
        if (r == 0 && ms == 0)
            return 0;
        if (r < 0 && errno != EINTR)
            return -1;
    }
}

static void tg_fail(tg_get *g, int kind, int err, const char *fmt, const char *detail)
{
    g->kind = kind;
    g->err = err;
    snprintf(g->msg, sizeof(g->msg), fmt, detail);
}

/* OpenSSL's reason for the last failure on this thread (its error queue), e.g.
 * "error:0A000086:SSL routines::certificate verify failed". */
static void tg_fail_openssl(tg_get *g, int kind, const char *what)
{
    char reason[256] = "no detail from OpenSSL";
    unsigned long e = tg_api.ERR_peek_last_error();
    if (e != 0)
        tg_api.ERR_error_string_n(e, reason, sizeof(reason));
    g->kind = kind;
    g->err = 0;
    snprintf(g->msg, sizeof(g->msg), "%s: %s", what, reason);
    tg_api.ERR_clear_error();
}

/* The kubeconfig's certificate-authority-data: every PEM certificate in it, at least one. */
static int tg_load_ca_pem(tg_get *g, void *ctx)
{
    if (g->ca_len > INT32_MAX) {
        tg_fail(g, TG_MATERIAL, 0, "certificate-authority-data%s is too large", "");
        return 0;
    }
    void *bio = tg_api.BIO_new_mem_buf(g->ca_pem, (int)g->ca_len);
    if (bio == NULL) {
        tg_fail_openssl(g, TG_SETUP, "cannot read certificate-authority-data");
        return 0;
    }
    void *store = tg_api.SSL_CTX_get_cert_store(ctx);
    int loaded = 0;
    tg_api.ERR_clear_error();
    for (;;) {
        void *cert = tg_api.PEM_read_bio_X509(bio, NULL, NULL, NULL);
        if (cert == NULL)
            break;
        int ok = tg_api.X509_STORE_add_cert(store, cert);
        tg_api.X509_free(cert);
        if (!ok) {
            tg_api.BIO_free(bio);
            tg_fail_openssl(g, TG_MATERIAL, "cannot add a certificate-authority-data certificate");
            return 0;
        }
        loaded++;
    }
    tg_api.BIO_free(bio);
    unsigned long e = tg_api.ERR_peek_last_error();
    /* The loop ends at "no start line" once the data holds no further certificate (as for
     * CPython's cadata); anything else is a damaged certificate. */
    if (loaded == 0 || (e != 0 && !(TG_ERR_LIB(e) == TG_ERR_LIB_PEM && TG_ERR_REASON(e) == TG_PEM_R_NO_START_LINE))) {
        if (loaded == 0 && (e == 0 || TG_ERR_REASON(e) == TG_PEM_R_NO_START_LINE)) {
            tg_api.ERR_clear_error();
            tg_fail(g, TG_MATERIAL, 0, "certificate-authority-data holds no PEM certificate%s", "");
        } else {
            tg_fail_openssl(g, TG_MATERIAL, "certificate-authority-data holds a damaged certificate");
        }
        return 0;
    }
    tg_api.ERR_clear_error();
    return 1;
}

/* Trust and client credentials, as transport._configure gives `_ssl`. */
static int tg_material(tg_get *g, void *ctx)
{
    if (g->insecure) {
        tg_api.SSL_CTX_set_verify(ctx, TG_SSL_VERIFY_NONE, NULL);
    } else if (g->ca_pem != NULL) {
        if (!tg_load_ca_pem(g, ctx))
            return 0;
    } else if (g->ca_file != NULL) {
        if (tg_api.SSL_CTX_load_verify_locations(ctx, g->ca_file, NULL) != 1) {
            tg_fail_openssl(g, TG_MATERIAL, "cannot load the certificate-authority file");
            return 0;
        }
    } else if (tg_api.SSL_CTX_set_default_verify_paths(ctx) != 1) {
        tg_fail_openssl(g, TG_MATERIAL, "cannot load the system's trusted certificates");
        return 0;
    }
    if (g->cert_file != NULL) {
        const char *key = g->key_file != NULL ? g->key_file : g->cert_file;
        if (tg_api.SSL_CTX_use_certificate_chain_file(ctx, g->cert_file) != 1) {
            tg_fail_openssl(g, TG_MATERIAL, "cannot load the client certificate");
            return 0;
        }
        if (tg_api.SSL_CTX_use_PrivateKey_file(ctx, key, TG_SSL_FILETYPE_PEM) != 1 ||
            tg_api.SSL_CTX_check_private_key(ctx) != 1) {
            tg_fail_openssl(g, TG_MATERIAL, "cannot load the client key (or it does not match the certificate)");
            return 0;
        }
    }
    return 1;
}

static int tg_connect(tg_get *g)
{
    int fd = socket(g->family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        tg_fail(g, TG_ERRNO, errno, "socket%s", "");
        return -1;
    }
    /* Our Finished and the request go out as two small writes: without NODELAY, Nagle holds
     * the request until the server ACKs the Finished, a delayed ACK away (~40 ms) after a
     * resumed handshake. */
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    struct sockaddr_in sin;
    struct sockaddr_in6 sin6;
    struct sockaddr *sa;
    socklen_t sa_len;
    if (g->family == AF_INET) {
        memset(&sin, 0, sizeof(sin));
        sin.sin_family = AF_INET;
        sin.sin_port = htons((uint16_t)g->port);
        memcpy(&sin.sin_addr, g->addr, 4);
        sa = (struct sockaddr *)&sin;
        sa_len = sizeof(sin);
    } else {
        memset(&sin6, 0, sizeof(sin6));
        sin6.sin6_family = AF_INET6;
        sin6.sin6_port = htons((uint16_t)g->port);
        memcpy(&sin6.sin6_addr, g->addr, 16);
        sa = (struct sockaddr *)&sin6;
        sa_len = sizeof(sin6);
    }
    if (connect(fd, sa, sa_len) != 0) {
        if (errno != EINPROGRESS) {
            tg_fail(g, TG_ERRNO, errno, "connect%s", "");
            close(fd);
            return -1;
        }
        int r = tg_poll(fd, POLLOUT, g->deadline);
        int soerr = 0;
        socklen_t len = sizeof(soerr);
        if (r == 0) {
            tg_fail(g, TG_TIMEOUT, 0, "connect timed out%s", "");
            close(fd);
            return -1;
        }
        if (r < 0 || getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &len) != 0 || soerr != 0) {
            tg_fail(g, TG_ERRNO, r < 0 ? errno : (soerr ? soerr : errno), "connect%s", "");
            close(fd);
            return -1;
        }
    }
    return fd;
}

/* Drive one non-blocking TLS call to completion: 1 done, 0 failed (g says why). */
static int tg_settle(tg_get *g, void *ssl, int fd, int r, const char *what)
{
    int e = tg_api.SSL_get_error(ssl, r);
    if (e == TG_SSL_ERROR_WANT_READ || e == TG_SSL_ERROR_WANT_WRITE) {
        int w = tg_poll(fd, e == TG_SSL_ERROR_WANT_READ ? POLLIN : POLLOUT, g->deadline);
        if (w > 0)
            return 1; /* call again */
        if (w == 0)
            tg_fail(g, TG_TIMEOUT, 0, "%s timed out", what);
        else
            tg_fail(g, TG_ERRNO, errno, "%s", what);
        return 0;
    }
    if (e == TG_SSL_ERROR_SYSCALL && tg_api.ERR_peek_last_error() == 0) {
        if (r == 0 || errno == 0)
            tg_fail(g, TG_TLS, 0, "%s: the server closed the connection", what);
        else
            tg_fail(g, TG_ERRNO, errno, "%s", what);
        return 0;
    }
    long verify = g->insecure ? TG_X509_V_OK : tg_api.SSL_get_verify_result(ssl);
    if (verify != TG_X509_V_OK) {
        tg_api.ERR_clear_error();
        g->kind = TG_VERIFY;
        g->err = (int)verify;
        snprintf(g->msg, sizeof(g->msg), "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: %s",
                 tg_api.X509_verify_cert_error_string(verify));
        return 0;
    }
    tg_fail_openssl(g, TG_TLS, what);
    return 0;
}

static int tg_append(tg_get *g, const char *data, size_t n)
{
    if (g->len + n > g->cap) {
        tg_fail(g, TG_TOO_LARGE, 0, "the answer is larger than the limit%s", "");
        return 0;
    }
    if (g->len + n > g->room) { /* doubling: O(answer) copying in all */
        size_t room = g->room ? g->room : 65536;
        while (room < g->len + n)
            room *= 2;
        if (room > g->cap)
            room = g->cap;
        char *grown = realloc(g->buf, room);
        if (grown == NULL) {
            tg_fail(g, TG_SETUP, ENOMEM, "out of memory%s", "");
            return 0;
        }
        g->buf = grown;
        g->room = room;
    }
    memcpy(g->buf + g->len, data, n);
    g->len += n;
    return 1;
}

/* Is this failure the peer closing without close_notify? An EOF like any other here, as for
 * transport.TLSConn (CPython's SSLEOFError): the answer's own framing (Content-Length,
 * chunks) is what http1 checks for completeness. */
static int tg_unexpected_eof(void *ssl, int r)
{
    int e = tg_api.SSL_get_error(ssl, r);
    unsigned long last = tg_api.ERR_peek_last_error();
    if (e == TG_SSL_ERROR_SYSCALL && last == 0 && r == 0)
        return 1;
    return e == TG_SSL_ERROR_SSL && TG_ERR_LIB(last) == TG_ERR_LIB_SSL &&
           TG_ERR_REASON(last) == TG_SSL_R_UNEXPECTED_EOF_WHILE_READING;
}

/* ---- The TLS session, kept between plugin processes ---------------------------------------
 *
 * A full TLS 1.3 handshake costs the API server a signature with its key and us a chain
 * verification: ~1.3 ms of the pod GET here (benchmarks/RESULTS.md, "TLS session
 * resumption"). Every ADD is a new process, so the session (TLS 1.3 ticket and resumption
 * secret, OpenSSL's DER form) is kept in a file in the node program's run dir, beside the
 * plugin's kubeconfig and its token and with the same protection (root only): whoever can
 * read it can read those too. Resuming proves the server is the one our earlier handshake
 * verified (only it can open the ticket); a server that cannot opens a full handshake,
 * verified as ever. The file is bound to the trust it was made under (the server's IP and
 * port, the CA data or the CA file's identity): a new CA, or another server, never resumes an
 * old session. Sessions authenticated by a client certificate are never kept (the identity
 * would outlive a rotated certificate); the bearer token travels in every request anyway.
 * The file is read with O_NOFOLLOW, must be a regular file owned by us, writable by nobody
 * else, at most TG_SESSION_MAX bytes; it is replaced by rename, never written in place, and
 * only after a full handshake. Anything unexpected: no resumption, and the GET goes on. */

#define TG_SESSION_MAGIC "istio-cni tls session 1\n"
#define TG_SESSION_MAGIC_LEN (sizeof(TG_SESSION_MAGIC) - 1)
#define TG_SESSION_BINDING 32
#define TG_SESSION_HEAD (TG_SESSION_MAGIC_LEN + TG_SESSION_BINDING)
#define TG_SESSION_MAX 16384

static int tg_digest_part(void *md, const void *data, size_t len)
{
    uint64_t n = len; /* length-prefixed: parts cannot run into each other */
    return tg_api.EVP_DigestUpdate(md, &n, sizeof(n)) == 1 && tg_api.EVP_DigestUpdate(md, data, len) == 1;
}

/* What the session is bound to (SHA-256); 0 when this exchange keeps no session. */
static int tg_session_binding(tg_get *g, unsigned char out[TG_SESSION_BINDING])
{
    if (g->session_file == NULL || g->insecure || g->cert_file != NULL)
        return 0;
    char where[64];
    snprintf(where, sizeof(where), "%s|%d", g->ip, g->port);
    void *md = tg_api.EVP_MD_CTX_new();
    if (md == NULL)
        return 0;
    unsigned int len = 0;
    int ok = tg_api.EVP_DigestInit_ex(md, tg_api.EVP_sha256(), NULL) == 1 &&
             tg_digest_part(md, TG_SESSION_MAGIC, TG_SESSION_MAGIC_LEN) && tg_digest_part(md, where, strlen(where));
    if (ok && g->ca_pem != NULL) {
        ok = tg_digest_part(md, "ca-data", 7) && tg_digest_part(md, g->ca_pem, g->ca_len);
    } else if (ok && g->ca_file != NULL) {
        struct stat st;
        ok = stat(g->ca_file, &st) == 0;
        if (ok) { /* the file's identity: a replaced or rewritten CA file binds anew */
            int64_t id[5] = {(int64_t)st.st_dev, (int64_t)st.st_ino, (int64_t)st.st_size,
                             (int64_t)st.st_mtim.tv_sec, (int64_t)st.st_mtim.tv_nsec};
            ok = tg_digest_part(md, "ca-file", 7) && tg_digest_part(md, g->ca_file, strlen(g->ca_file)) &&
                 tg_digest_part(md, id, sizeof(id));
        }
    } else if (ok) {
        ok = tg_digest_part(md, "system", 6);
    }
    ok = ok && tg_api.EVP_DigestFinal_ex(md, out, &len) == 1 && len == TG_SESSION_BINDING;
    tg_api.EVP_MD_CTX_free(md);
    tg_api.ERR_clear_error();
    return ok;
}

/* All of a file the plugin keeps for itself (the TLS session; the front's pod GET
 * description): read only if it is a regular file (no symlink) owned by this user, writable
 * by nobody else, of more than min and at most cap bytes (buf holds cap). Its length, or -1. */
static ssize_t tg_read_private(const char *path, unsigned char *buf, size_t min, size_t cap)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
    struct stat st;
    ssize_t n = -1;
    if (fd < 0)
        return -1;
    if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_uid == geteuid() && (st.st_mode & 022) == 0 &&
        st.st_size > (off_t)min && st.st_size <= (off_t)cap) {
        n = read(fd, buf, cap);
        if (n != (ssize_t)st.st_size)
            n = -1; /* changed while read */
    }
    close(fd);
    return n;
}

/* The kept session, if there is a sound one for this binding (else NULL). */
static void *tg_session_load(tg_get *g, const unsigned char binding[TG_SESSION_BINDING])
{
    unsigned char buf[TG_SESSION_MAX];
    ssize_t n = tg_read_private(g->session_file, buf, TG_SESSION_HEAD, sizeof buf);
    if (n < 0 || memcmp(buf, TG_SESSION_MAGIC, TG_SESSION_MAGIC_LEN) != 0 ||
        memcmp(buf + TG_SESSION_MAGIC_LEN, binding, TG_SESSION_BINDING) != 0)
        return NULL;
    const unsigned char *p = buf + TG_SESSION_HEAD;
    void *sess = tg_api.d2i_SSL_SESSION(NULL, &p, (long)(n - (ssize_t)TG_SESSION_HEAD));
    if (sess != NULL && (p != buf + n || !tg_api.SSL_SESSION_is_resumable(sess) ||
                         tg_api.SSL_SESSION_get_protocol_version(sess) != TG_TLS1_3_VERSION)) {
        tg_api.SSL_SESSION_free(sess);
        sess = NULL;
    }
    tg_api.ERR_clear_error();
    return sess;
}

static int tg_write_all(int fd, const unsigned char *data, size_t len)
{
    while (len > 0) {
        ssize_t w = write(fd, data, len);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return 0;
        data += w;
        len -= (size_t)w;
    }
    return 1;
}

/* A resumable TLS 1.3 copy of the connection's session as it is now, or NULL. A copy: a
 * server that closes without close_notify makes OpenSSL mark the connection's own session
 * unresumable, though the ticket that came before the answer is as sound as ever. */
static void *tg_session_snapshot(void *ssl)
{
    void *sess = tg_api.SSL_get1_session(ssl);
    void *copy = NULL;
    if (sess != NULL && tg_api.SSL_SESSION_is_resumable(sess) &&
        tg_api.SSL_SESSION_get_protocol_version(sess) == TG_TLS1_3_VERSION)
        copy = tg_api.SSL_SESSION_dup(sess);
    if (sess != NULL)
        tg_api.SSL_SESSION_free(sess);
    tg_api.ERR_clear_error();
    return copy;
}

/* Keep sess (freed here) in the session file. */
static void tg_session_save(tg_get *g, void *sess, const unsigned char binding[TG_SESSION_BINDING])
{
    unsigned char buf[TG_SESSION_MAX];
    char tmp[PATH_MAX];
    int len = tg_api.i2d_SSL_SESSION(sess, NULL);
    /* ".<name>.tmp.<pid>" beside it: the node program's name for temp files, which it removes
     * at start when a process died before its rename (atomic.remove_stale_temps). */
    const char *slash = strrchr(g->session_file, '/');
    int dir_len = slash != NULL ? (int)(slash - g->session_file) + 1 : 0;
    int named = snprintf(tmp, sizeof(tmp), "%.*s.%s.tmp.%ld", dir_len, g->session_file, g->session_file + dir_len,
                         (long)getpid());
    if (len > 0 && (size_t)len <= sizeof(buf) - TG_SESSION_HEAD && named > 0 && (size_t)named < sizeof(tmp)) {
        unsigned char *p = buf + TG_SESSION_HEAD;
        memcpy(buf, TG_SESSION_MAGIC, TG_SESSION_MAGIC_LEN);
        memcpy(buf + TG_SESSION_MAGIC_LEN, binding, TG_SESSION_BINDING);
        if (tg_api.i2d_SSL_SESSION(sess, &p) == len) {
            int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
            if (fd >= 0) {
                int ok = tg_write_all(fd, buf, TG_SESSION_HEAD + (size_t)len);
                ok = close(fd) == 0 && ok;
                if (!ok || rename(tmp, g->session_file) != 0)
                    unlink(tmp);
            }
        }
    }
    tg_api.SSL_SESSION_free(sess);
    tg_api.ERR_clear_error();
}

static void tg_exchange(tg_get *g)
{
    if (!tg_openssl()) {
        tg_fail(g, TG_SETUP, 0, "libssl.so.3 cannot be loaded or lacks a function%s", "");
        return;
    }
    tg_api.ERR_clear_error();
    void *ctx = tg_take_context();
    if (ctx == NULL) {
        tg_fail_openssl(g, TG_SETUP, "cannot create a TLS client context");
        return;
    }
    g->at[TG_AT_CONTEXT] = tg_now();
    void *ssl = NULL;
    int fd = -1;
    unsigned char binding[TG_SESSION_BINDING];
    int keep = 0;      /* this exchange keeps its TLS session (tg_session_binding) */
    void *kept = NULL; /* the session to keep, once the exchange has succeeded */
    void *offer = NULL; /* the kept session this exchange offers (once) */
    keep = tg_session_binding(g, binding);
    if (keep)
        offer = tg_session_load(g, binding);
    /* Trust is loaded for a full handshake only: a resumed one shows no certificate, its
     * session was made by a verified handshake under this very trust (the binding), and
     * loading the CA costs ~0.4-0.6 ms of OpenSSL's decoders per ADD. Should the server want
     * a full handshake instead, its chain meets an empty trust store, which fails
     * verification before any request is sent; the retry below then loads the trust. */
    int trusted = 0;
    if (offer == NULL) {
        if (!tg_material(g, ctx))
            goto out;
        trusted = 1;
    }
    for (int offered = 0;; offered = 0) {
        fd = tg_connect(g);
        if (fd < 0)
            goto out;
        g->at[TG_AT_CONNECTED] = tg_now();
        ssl = tg_api.SSL_new(ctx);
        if (ssl == NULL || tg_api.SSL_set_fd(ssl, fd) != 1) {
            tg_fail_openssl(g, TG_SETUP, "cannot create a TLS connection");
            goto out;
        }
        if (!g->insecure && tg_api.X509_VERIFY_PARAM_set1_ip_asc(tg_api.SSL_get0_param(ssl), g->ip) != 1) {
            tg_fail_openssl(g, TG_SETUP, "cannot set the IP address to verify");
            goto out;
        }
        if (offer != NULL) {
            tg_api.SSL_set_session(ssl, offer); /* offered; the server may still want a full handshake */
            tg_api.SSL_SESSION_free(offer);
            offer = NULL;
            tg_api.ERR_clear_error();
            offered = 1;
        }
        int shaken = 1;
        for (;;) {
            tg_api.ERR_clear_error();
            int r = tg_api.SSL_connect(ssl);
            if (r == 1)
                break;
            if (!tg_settle(g, ssl, fd, r, "TLS handshake")) {
                shaken = 0;
                break;
            }
        }
        if (shaken) {
            g->at[TG_AT_HANDSHAKE] = tg_now();
            break;
        }
        /* The kept session did not serve. A server that cannot open its ticket (restarted,
         * keys rotated) answers with a full handshake, which fails here without trust loaded;
         * one whose binder does not verify (a damaged session file that still parses) must
         * abort the handshake: every later ADD would meet the same. The file goes, and this
         * exchange tries once more without it, trust loaded, keeping the session of that full
         * handshake (a session another process kept meanwhile may go too: it costs one full
         * handshake). Not after a timeout: the deadline has passed. */
        if (!offered || g->kind == TG_TIMEOUT)
            goto out;
        unlink(g->session_file);
        tg_api.SSL_free(ssl);
        ssl = NULL;
        close(fd);
        fd = -1;
        g->kind = TG_OK;
        g->err = 0;
        g->msg[0] = '\0';
        if (!trusted) {
            if (!tg_material(g, ctx))
                goto out;
            trusted = 1;
        }
    }
    for (;;) {
        tg_api.ERR_clear_error();
        int r = tg_api.SSL_write(ssl, g->request, (int)g->request_len);
        if (r > 0)
            break;
        if (!tg_settle(g, ssl, fd, r, "sending the request"))
            goto out;
    }
    for (;;) {
        char chunk[16384];
        tg_api.ERR_clear_error();
        int r = tg_api.SSL_read(ssl, chunk, sizeof(chunk));
        if (r > 0) {
            if (g->len == 0)
                g->at[TG_AT_ANSWER] = tg_now();
            if (keep && g->len == 0 && !tg_api.SSL_session_reused(ssl))
                kept = tg_session_snapshot(ssl); /* the ticket comes before the answer */
            if (!tg_append(g, chunk, (size_t)r))
                goto out;
            continue;
        }
        int e = tg_api.SSL_get_error(ssl, r);
        if (e == TG_SSL_ERROR_ZERO_RETURN || tg_unexpected_eof(ssl, r))
            break; /* the server closed the connection: the answer is complete */
        if (e == TG_SSL_ERROR_WANT_READ && g->len > 0) {
            int w = tg_poll(fd, POLLIN, g->deadline);
            if (w > 0)
                continue;
            if (w == 0)
                break; /* the deadline, an answer begun but not closed: http1 judges whether it is whole */
        }
        if (!tg_settle(g, ssl, fd, r, "reading the answer"))
            goto out;
    }
    g->kind = TG_OK;
    g->resumed = tg_api.SSL_session_reused(ssl);
    if (keep && !g->resumed) {
        void *last = tg_session_snapshot(ssl); /* tickets may also follow the answer */
        if (last != NULL) {
            if (kept != NULL)
                tg_api.SSL_SESSION_free(kept);
            kept = last;
        }
        if (kept != NULL) {
            tg_session_save(g, kept, binding); /* frees it */
            kept = NULL;
        }
    }
out:
    if (offer != NULL)
        tg_api.SSL_SESSION_free(offer);
    if (kept != NULL)
        tg_api.SSL_SESSION_free(kept);
    tg_api.ERR_clear_error();
    if (ssl != NULL)
        tg_api.SSL_free(ssl);
    if (fd >= 0)
        close(fd);
    tg_api.SSL_CTX_free(ctx);
}

static void *tg_thread(void *arg)
{
    tg_get *g = (tg_get *)arg;
    g->at[TG_AT_START] = tg_now();
    tg_exchange(g);
    g->at[TG_AT_DONE] = tg_now();
    uint64_t one = 1;
    ssize_t w;
    do
        w = write(g->done_fd, &one, sizeof(one));
    while (w < 0 && errno == EINTR);
    return NULL;
}

/* Has the thread finished (0: not yet)? Waits at most timeout seconds (0: never waits). */
static int tg_wait_done(tg_get *g, double timeout)
{
    int r = tg_poll(g->done_fd, POLLIN, tg_now() + timeout);
    return r != 0;
}

/* The negotiated profile of tg_context, for the parity test: options, minimum protocol
 * version, verify mode, verify flags; cipher names into names (colon-separated). */
static int tg_profile(uint64_t *options, long *min_version, int *verify_mode, unsigned long *flags, char *names,
                      size_t names_len)
{
    if (!tg_openssl())
        return 0;
    void *ctx = tg_context();
    if (ctx == NULL)
        return 0;
    *options = tg_api.SSL_CTX_get_options(ctx);
    *min_version = tg_api.SSL_CTX_ctrl(ctx, TG_SSL_CTRL_GET_MIN_PROTO_VERSION, 0, NULL);
    *verify_mode = tg_api.SSL_CTX_get_verify_mode(ctx);
    *flags = tg_api.X509_VERIFY_PARAM_get_flags(tg_api.SSL_CTX_get0_param(ctx));
    names[0] = '\0';
    void *ciphers = tg_api.SSL_CTX_get_ciphers(ctx);
    int n = ciphers != NULL ? tg_api.OPENSSL_sk_num(ciphers) : 0;
    size_t used = 0;
    for (int i = 0; i < n; i++) {
        const char *name = tg_api.SSL_CIPHER_get_name(tg_api.OPENSSL_sk_value(ciphers, i));
        int w = snprintf(names + used, names_len - used, "%s%s", i ? ":" : "", name);
        if (w < 0 || (size_t)w >= names_len - used)
            break;
        used += (size_t)w;
    }
    tg_api.SSL_CTX_free(ctx);
    return 1;
}
