# Runs inside a plugin process started by bench_phases.py's probe launcher, before any of the
# plugin's code: the launcher's -c line sets T0 = time.monotonic() as its very first statement
# and execs this file. Benchmark tooling only: never part of the plugin or its bundle.
#
# It wraps the functions that make up an ADD's phases with timers (a wrapper costs ~1 us),
# optionally imports every module the ADD will import up front (ISTIO_CNI_PHASE_MODULES, as
# listed by an earlier run) so that import time is one phase instead of being spread over the
# others, runs the plugin's main() and, when the result is about to be written, prints one line
# "PHASES {...}" to stderr: marks (CLOCK_MONOTONIC seconds, comparable with the parent's clock),
# accumulated seconds per wrapped function, and the modules imported since T0.
# Only builtin modules here (gc, posix, sys, time: builtins or loaded by the interpreter itself).
import gc
import posix
import sys

gc.disable()  # as the bundle's launch code does (istio_cni_installer.binaries.launch_code)

_now = time.monotonic  # noqa: F821  (time is imported by the -c line)
_env = posix.environ
_marks = {"first": T0}  # noqa: F821
_acc = {}
_calls = {}
_base = set(sys.modules)
sys.path.insert(0, _env[b"ISTIO_CNI_PHASE_SITE"].decode())


def _wrap(obj, attr, label):
    f = getattr(obj, attr)

    def timed(*a, **k):
        t = _now()
        try:
            return f(*a, **k)
        finally:
            _acc[label] = _acc.get(label, 0.0) + _now() - t
            _calls[label] = _calls.get(label, 0) + 1

    setattr(obj, attr, timed)


_marks["probe"] = _now()
# As the bundle's launch code does: the plugin's modules from the bundle's module archive.
from istio_cni._modarchive import serve as _serve  # noqa: E402

_serve(_env[b"ISTIO_CNI_PHASE_SITE"].decode())
_preload = _env.get(b"ISTIO_CNI_PHASE_MODULES", b"").decode().split()
if _preload:  # as main() does first: the front's prefetch taken, OpenSSL's set-up started, imports
    from istio_cni.__main__ import _take_front_prefetch, _warm_tls_for_add  # noqa: E402

    _take_front_prefetch()
    _warm_tls_for_add()
for _m in _preload:
    try:
        __import__(_m)
    except Exception:
        pass
_marks["imported"] = _now()

if _preload:
    # Only modules this ADD imports: wrapping must not import anything new. Those imported
    # after the preload (ahead of the pod GET's answer: plugin.ImportAhead) are wrapped as soon
    # as the GET returns, before the ADD calls into them.
    _M = sys.modules
    _targets = [
        ("skel", "read_stdin", "parse"), ("skel", "decode_netconf", "parse"),
        ("skel", "conf_version", "parse"), ("skel", "check_netns", "netns_check"),
        ("plugin", "_setup", "parse"), ("plugin", "prev_result", "parse"),
        ("kubeconfig", "load", "kubeconfig"),
        ("transport", "tls_material", "tls_context"),
        ("decide", "decide", "decide"), ("redirect", "redirect_from_pod", "decide"),
        ("rules.builder", "build", "decide"), ("netfilter.routes", "netns_addresses", "addresses"),
        ("netfilter", "apply", "commit"), ("agent_client", "try_agent", "agent")]

    def _wrap_present():
        for _t in list(_targets):
            if "istio_cni." + _t[0] in _M:
                _wrap(_M["istio_cni." + _t[0]], _t[1], _t[2])
                _targets.remove(_t)

    _wrap_present()
    if "istio_cni.k8s" in _M:
        _k8s = _M["istio_cni.k8s"]
        _get_pod = _k8s.get_pod

        def _get_pod_then_wrap(*a, **k):
            try:
                return _get_pod(*a, **k)
            finally:
                # What the import-ahead did not get to (all of it when the front's child had
                # the answer ready): imported here, as the ADD would next, and timed apart.
                _t = _now()
                for _n in reversed(_M["istio_cni.plugin"].ImportAhead("auto").names):
                    try:
                        __import__(_n)
                    except Exception:
                        pass
                _acc["after_imports"] = _acc.get("after_imports", 0.0) + _now() - _t
                _wrap_present()

        _k8s.get_pod = _get_pod_then_wrap
        _wrap(_k8s, "get_pod", "get_pod")
    if "istio_cni.k8s" in _M:  # the one-shot plugin's TLS: connect, handshake, GET on a C thread
        _wrap(_M["istio_cni.k8s"].Client, "_exchange_in_c", "exchange")
        _fp = _M["istio_cni._fastpath"]

        def _mark_steps(prefix, steps):
            for _name, _at in steps.items():
                if _at:
                    _marks[prefix + _name] = _at

        class _SteppedGet(_fp.HttpsGet):
            """The C thread's steps into the marks (``tls_<step>``), and the warm-up's
            (``warm_<step>``), once its answer is taken."""

            def __init__(self, *a, **k):
                _marks["tls_kickoff"] = _now()

            def result(self):
                try:
                    return super().result()
                finally:
                    _mark_steps("tls_", self.steps())
                    _mark_steps("warm_", _fp.openssl_warm_steps())

        _fp.HttpsGet = _SteppedGet

        class _SteppedPrefetch(_fp.Prefetched):
            """The front's child's steps into the marks (``pre_<step>``), once its answer is taken."""

            def result(self):
                try:
                    return super().result()
                finally:
                    _mark_steps("pre_", self.steps())

        _fp.Prefetched = _SteppedPrefetch
    if "istio_cni.plugin" in _M:  # the imports done while the API server works (in the exchange)
        _wrap(_M["istio_cni.plugin"].ImportAhead, "__call__", "ahead")
    _skel = _M["istio_cni.skel"]
    _write = _skel._write

    def _final(stream, obj):
        _marks["result"] = _now()
        sys.stderr.write("PHASES " + repr({"marks": _marks, "acc": _acc, "calls": _calls}) + "\n")
        sys.stderr.flush()
        return _write(stream, obj)

    _skel._write = _final
else:  # the listing run: which modules does this ADD import?
    import istio_cni.skel as _skel

    _write = _skel._write

    def _final(stream, obj):
        mods = [n for n, m in sys.modules.items()  # in import order
                if n not in _base and type(m) is type(sys) and getattr(m, "__spec__", None) is not None]
        ext = [n for n in mods if str(getattr(sys.modules[n], "__file__", "")).endswith(".so")]
        sys.stderr.write("PHASES " + repr({"modules": mods, "extensions": ext}) + "\n")
        return _write(stream, obj)

    _skel._write = _final

from istio_cni.__main__ import main  # noqa: E402

if _env.get(b"ISTIO_CNI_PHASE_NORMAL_EXIT"):  # the exit lever's "before": full finalisation
    sys.modules["istio_cni.__main__"]._exit_now = sys.exit
main()
