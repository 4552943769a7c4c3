/* The front's agent path: an ADD sent to the node agent without starting the interpreter.
 *
 * Contract with the plugin (src/istio_cni/agent_client.py, src/istio_cni/__main__.py):
 *
 * - The front contacts the agent only for an ADD the plugin would send to the agent itself
 *   with the same request: CNI variables present and UTF-8, stdin UTF-8 JSON, a supported
 *   cniVersion, CNI_NETNS a network namespace other than ours, CNI_ARGS naming a pod by valid
 *   DNS names in a namespace neither excluded nor the node program's own, an agent run dir and
 *   a positive timeout in the netconf. Anything else: hand over before any exchange, and the
 *   plugin runs as if the front were the shell launcher (stdin replayed).
 * - It prints the answer only for HTTP/1.1 200 with one Content-Length and the body exactly
 *   {"result": R} where R equals the prevResult the plugin would hand on in the caller's
 *   cniVersion (checked without version conversion), written as json_dumps writes it.
 * - Every other outcome is handed over with the exchange recorded (FRONT_EXCHANGE_ENV names an
 *   inherited fd): "istio-cni-front-exchange 1 <connect> <send> <end> <socket as hex>\n" then
 *   the raw bytes received, where connect/send are ok|timeout|<errno> and end is
 *   complete|eof|timeout|cap|<errno>. The plugin replays it through its own client code.
 */
#ifndef ISTIO_CNI_FRONT_AGENT_H
#define ISTIO_CNI_FRONT_AGENT_H

#include <stddef.h>
#include <sys/un.h>

#define FRONT_EXCHANGE_ENV "ISTIO_CNI_FRONT_EXCHANGE"
#define FRONT_MAX_STDIN (4u << 20)    /* skel.MAX_STDIN_BYTES: more is the plugin's code 6 */
#define FRONT_MAX_REQUEST_STDIN (256u << 10) /* a netconf is a few KiB; bigger ones go direct */
#define FRONT_MAX_ANSWER (1u << 20)   /* agent_client.MAX_ANSWER */
#define FRONT_MAX_HEAD (64u << 10)    /* http1.MAX_HEAD */
#define FRONT_MAX_RECORD (FRONT_MAX_HEAD + 4 + FRONT_MAX_ANSWER + 4096)
#define FRONT_MAX_TIMEOUT 30.0        /* agent_client.MAX_TIMEOUT */
#define FRONT_DEFAULT_TIMEOUT 2.0     /* config: agent_timeout_seconds */

struct bytes {
    char *buf;
    size_t len;
};

#define FX_OK 0
#define FX_TIMEOUT (-1)
#define FX_COMPLETE (-2)
#define FX_EOF (-3)
#define FX_CAP (-4)

struct exchange {
    char sock[sizeof(((struct sockaddr_un *)0)->sun_path)];
    int connect_result; /* FX_OK, FX_TIMEOUT or an errno */
    int send_result;    /* FX_OK, FX_TIMEOUT or an errno */
    int end;            /* FX_COMPLETE, FX_EOF, FX_TIMEOUT, FX_CAP or an errno */
    char *raw;
    size_t len;
};

enum front_outcome { FRONT_HAND_OVER, FRONT_EXCHANGED, FRONT_DONE, FRONT_STDOUT_FAILED };

/* An ADD the plugin will take to the API server itself (src/front/prefetch.h): agent_add
 * planned it as the plugin would and its agent did not answer (no socket, refused, timed out). */
struct direct_add {
    int planned;
    char run_dir[sizeof(((struct sockaddr_un *)0)->sun_path)];
    size_t run_dir_len;
    char ns[64], name[254];
    size_t nsl, nl;
};

void front_clock_start(void);
int front_wants(const char *command);
/* All of stdin, at most FRONT_MAX_STDIN + 1 bytes: 0 read to EOF; 1 read but unusable (over
 * the limit, or failed after some bytes); -1 failed before any byte. */
int read_stdin(struct bytes *in);
enum front_outcome agent_add(const struct bytes *in, const char *versions, const char *sock_name,
                             struct exchange *x, struct direct_add *direct);
/* fd 0 becomes a memfd (or pipe) holding in's bytes, at offset 0. 0 or -1 (errno). */
int replay_stdin(const struct bytes *in);
/* An inheritable fd holding the record of x; -1 (errno) on failure. */
int record_exchange(const struct exchange *x);

#endif
