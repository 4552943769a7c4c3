"""``istio-cni`` entry point: the process kubelet/containerd exec per pod sandbox."""

import sys

# Set by the compiled front (src/front/agent.h) when it hands an ADD over after talking to the
# node agent: the fd of its record of that exchange, which agent_client replays.
FRONT_EXCHANGE_ENV = "ISTIO_CNI_FRONT_EXCHANGE"
# Set by the compiled front (src/front/prefetch.h) when it started the pod GET itself:
# "<record fd>,<done fd>,<child pid>", which k8s.Client takes when the exchange is the one it
# would make.
FRONT_PREFETCH_ENV = "ISTIO_CNI_FRONT_PREFETCH"


def _broken_install(exc: BaseException) -> int:
    """The plugin's own modules failed to import: still one CNI error document on stdout."""
    from .errors import internal_error

    err = internal_error(exc)
    try:
        from ._fastpath import json_dumps

        text = json_dumps(err.to_dict("1.1.0"))
    except BaseException:
        text = '{"cniVersion":"1.1.0","code":999,"msg":"internal error: the plugin cannot load its modules"}'
    try:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()
    except Exception:
        pass
    return 1


def main() -> None:
    from . import addtiming

    addtiming.mark_start()
    _take_front_exchange()
    _take_front_prefetch()
    _warm_tls_for_add()
    if len(sys.argv) > 1 and sys.argv[1] == "validate":  # the istio-validation init container
        try:
            from .tools.validate import main as validate_main
        except ImportError:  # the host bundle carries the plugin only, not istio_cni.tools
            sys.exit("istio-cni validate: not part of this installation (the node image has it)")

        sys.exit(validate_main(sys.argv[2:]))
    try:
        from .plugin import FUNCS
        from .skel import plugin_main
    except Exception as e:
        sys.exit(_broken_install(e))

    import istio_cni  # this package, already loaded: costs nothing

    istio_cni.ONE_SHOT_PROCESS = True  # lets TLS skip encodings.idna (transport._ascii_idna)

    code = plugin_main(FUNCS)
    if addtiming.agent_socket:  # set by a direct-path ADD that wanted the agent
        addtiming.finish(code)
    _exit_now(code)


def _warm_tls_for_add() -> None:
    """An ADD that reaches Python is most likely one that GETs its pod (the compiled front
    answers ordinary agent-path ADDs itself): have OpenSSL loaded and set up on a C thread
    meanwhile (``_fastpath.openssl_warm_start``). Other commands never do TLS."""
    import posix

    import istio_cni

    if posix.environ.get(b"CNI_COMMAND") != b"ADD" or istio_cni.FRONT_PREFETCH is not None:
        return  # no TLS; or the front's child is doing this ADD's (then OpenSSL stays unloaded here)
    try:
        from ._fastpath import openssl_warm_start
    except ImportError:  # a broken install: the ADD reports it in its own place
        return
    openssl_warm_start()


def _take_env(name: str) -> bytes | None:
    """``name``'s value, taken out of this process's environment and every child's."""
    import posix

    key = name.encode()
    value = posix.environ.pop(key, None)
    if value is not None:
        posix.unsetenv(key)
    return value


def _take_front_exchange() -> None:
    """Keep the front's exchange record for agent_client, out of every child's sight: the
    variable leaves the environment and the fd is not inherited by programs we run. Through
    ``posix``, not ``os`` (kept off the ADD path: ``istio_cni.environ``); ``os.environ``, if a
    later path imports ``os``, is built on the same ``posix.environ`` dict."""
    import posix

    value = _take_env(FRONT_EXCHANGE_ENV)
    if value is None:
        return
    fd = int(value) if value.isdigit() and len(value) < 8 else -1  # bytes.isdigit: ASCII only
    try:
        posix.set_inheritable(fd, False)
    except OSError:
        fd = -1  # not an open fd: agent_client reports the record unreadable
    import istio_cni

    istio_cni.FRONT_EXCHANGE_FD = fd


def _take_front_prefetch() -> None:
    """Keep the front's prefetch fds for k8s.Client, out of every child's sight (as
    ``_take_front_exchange``). A value that does not name two open fds is dropped: the ADD
    then makes its own exchange."""
    import posix

    value = _take_env(FRONT_PREFETCH_ENV)
    if value is None:
        return
    parts = value.split(b",")
    if len(parts) != 3 or not all(p.isdigit() and len(p) < 8 for p in parts):
        return
    record, done, pid = (int(p) for p in parts)
    import istio_cni

    istio_cni.FRONT_PREFETCH_PID = pid  # ours to end and reap (_reap_front_prefetch), whatever follows
    try:
        for fd in (record, done):
            posix.set_inheritable(fd, False)
    except OSError:
        return
    istio_cni.FRONT_PREFETCH = (record, done)


def _reap_front_prefetch() -> None:
    """The front's child, done or not needed by now, ended and reaped if it is already gone
    (never waiting: an exiting child left behind is reaped by init, as any orphan)."""
    import istio_cni

    pid = istio_cni.FRONT_PREFETCH_PID
    if pid <= 0:
        return
    import posix

    try:
        posix.kill(pid, 9)  # SIGKILL; our own unreaped child: the pid cannot be another's
        posix.waitpid(pid, posix.WNOHANG)
    except OSError:
        pass


def _exit_now(code: int) -> None:
    """Exit without interpreter finalisation.

    The result is on stdout and the runtime waits for this process to end; tearing down every
    module and object (and unloading the libraries) took 4-8 ms per ADD and serves nobody.
    What a normal exit does that matters still happens first: exit handlers (the agent log
    relay) and flushing stdout/stderr."""
    import atexit
    import posix  # not os: see istio_cni.environ

    # posix._exit runs no C exit handler, so OpenSSL's cleanup cannot race its warm-up thread
    # (a pass-through ADD never joined it): no need to wait for it.
    warm = sys.modules.get(__package__ + "._fastpath")
    if warm is not None:
        atexit.unregister(warm.openssl_warm_wait)
    try:
        atexit._run_exitfuncs()
        _reap_front_prefetch()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                if stream is not None:
                    stream.flush()
            except Exception:  # a closed or broken pipe: nothing left to tell anyone
                pass
        posix._exit(code)


if __name__ == "__main__":
    main()
