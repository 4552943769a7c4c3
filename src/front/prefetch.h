/* The front's prefetch of the direct path's pod GET.
 *
 * When the node agent does not answer, the plugin GETs its pod from the API server itself,
 * after the interpreter has started and imported its modules (~13 ms here). The exchange
 * (OpenSSL's set-up, connect, TLS handshake, the API server's work) then sits on the ADD's
 * critical path. So the front starts it first: it forks a child that makes the very exchange
 * the plugin would make, with the plugin's own C TLS client (src/istio_cni/_tlsget.h), while
 * it execs the interpreter. (benchmarks/RESULTS.md, "The pod GET started by the front".)
 *
 * What exchange: the plugin describes it after making it itself (k8s.Client,
 * `<cni_agent_run_dir>/istio-cni-prefetch`, JSON: host, port, trust, TLS session file, answer
 * cap, attempt timeout, and the request split around the pod's namespace and name). The file
 * holds the bearer token: read only if it is a regular file (no symlink) owned by this user
 * and writable by nobody else, as the TLS session file is. No description, or anything in it
 * the front does not take exactly: no prefetch, and the plugin does what it always did.
 *
 * Contract with the plugin (istio_cni/k8s.py, _fastpath.Prefetched): PREFETCH_ENV names two
 * inherited fds and the child, "<record>,<done>,<pid>".
 * - record: a memfd holding PREFETCH_MAGIC, the params' length (8 bytes, little endian) and
 *   the params, a JSON object of the exact HttpsGet arguments used (host, port, request,
 *   ca_file, ca_pem, session_file, cap) and the exchange's deadline (CLOCK_MONOTONIC
 *   seconds), all written before the fork; after them, written by the child once its
 *   exchange is over, the outcome (_fastpath.Prefetched reads it): PREFETCH_OUTCOME_MAGIC,
 *   then little-endian int32 kind (tg_kind), int32 err, int32 resumed, uint32 message length,
 *   6 doubles (tg_get.at), uint64 answer length, the message, the answer.
 * - done: a pipe's read end, at EOF once the child has written the outcome or is gone.
 * The plugin takes the outcome only when those params are exactly the arguments it would pass
 * to HttpsGet itself; otherwise it makes its own exchange. The plugin ends the child (if still
 * there) and reaps it before it exits; should the plugin die first, the child dies with it
 * (PR_SET_PDEATHSIG). The child holds none of the runtime's pipes.
 */
#ifndef ISTIO_CNI_FRONT_PREFETCH_H
#define ISTIO_CNI_FRONT_PREFETCH_H

#include <stddef.h>

#define PREFETCH_ENV "ISTIO_CNI_FRONT_PREFETCH"
#define PREFETCH_NAME "istio-cni-prefetch" /* k8s.PREFETCH_NAME */
#define PREFETCH_MAGIC "istio-cni-front-prefetch 1\n"
#define PREFETCH_OUTCOME_MAGIC "istio-cni-prefetch-outcome 1\n"
#define PREFETCH_MAX_DESCRIPTION (64u << 10)

/* Start the prefetch for the pod ns/name with the description in run_dir, the TLS libraries
 * from lib_dir. On success (a child started) writes "PREFETCH_ENV=<record>,<done>,<pid>" into
 * env (cap bytes) and returns 0; -1: no prefetch, no fd left open. */
int prefetch_start(const char *run_dir, size_t run_dir_len, const char *ns, size_t nsl, const char *name,
                   size_t nl, const char *lib_dir, char *env, size_t cap);

#endif
