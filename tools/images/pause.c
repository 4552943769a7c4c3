/* The sandbox ("pause") process of the node test tier's containerd: holds the pod's namespaces,
 * reaps orphans, exits 0 on SIGTERM/SIGINT. Built static (gcc -static) into a scratch image by
 * tools/images/build.py, because no registry is reachable to pull the upstream one. */
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

static void on_term(int sig) { (void)sig; _exit(0); }

static void on_child(int sig) {
    (void)sig;
    while (waitpid(-1, NULL, WNOHANG) > 0) {}
}

int main(void) {
    struct sigaction term = {.sa_handler = on_term}, child = {.sa_handler = on_child};
    sigaction(SIGTERM, &term, NULL);
    sigaction(SIGINT, &term, NULL);
    child.sa_flags = SA_NOCLDSTOP | SA_RESTART;
    sigaction(SIGCHLD, &child, NULL);
    for (;;)
        pause();
}
