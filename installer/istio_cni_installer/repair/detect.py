"""Which pods are broken: started without our redirect rules (pure functions of the pod JSON).

Upstream (``cni/pkg/repair``, research §6 and seed §4.2): a pod is broken when it carries the
sidecar annotation and its ``istio-validation`` init container's *previous* termination has
the expected exit code (126) and message, while the current state is not a success.
We also accept the *current* state being that failure: with ``restartPolicy: Never`` there
is no previous termination, so upstream never repairs such pods (istio/istio#49210).
"""

from __future__ import annotations

from istio_cni.decide import STATUS_KEY
from istio_cni.value import Value

MODES = ("repair", "label", "delete")


class RepairSettings(Value):
    # label_selectors / field_selectors narrow the pod watch server side (the controller checks
    # that its pod cache carries them: ``controller.pod_cache_for`` builds a matching one).
    __slots__ = (
        "mode",
        "node_name",
        "sidecar_annotation",
        "init_container_name",
        "exit_code",
        "termination_message",
        "label_key",
        "label_value",
        "check_netns",
        "proc_root",
        "netfilter_backend",
        "max_attempts",
        "create_events",
        "label_selectors",
        "field_selectors",
    )
    _defaults = {
        "sidecar_annotation": STATUS_KEY,
        "init_container_name": "istio-validation",
        "exit_code": 126,
        "termination_message": "",
        "label_key": "cni.istio.io/uninitialized",
        "label_value": "true",
        "check_netns": False,
        "proc_root": "/proc",
        "netfilter_backend": "auto",
        "max_attempts": 5,
        "create_events": True,
        "label_selectors": "",
        "field_selectors": "",
    }
    mode: str  # one of MODES
    node_name: str
    sidecar_annotation: str
    init_container_name: str
    exit_code: int  # 0..255, 0 = any
    termination_message: str
    label_key: str
    label_value: str
    check_netns: bool
    proc_root: str
    netfilter_backend: str
    max_attempts: int
    create_events: bool
    label_selectors: str
    field_selectors: str

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        if self.mode not in MODES:
            raise ValueError(f"repair mode {self.mode!r} is not one of {', '.join(MODES)}")
        if not self.node_name:
            raise ValueError("the repair controller needs the node name (KUBERNETES_NODE_NAME)")
        if not isinstance(self.exit_code, int) or not 0 <= self.exit_code <= 255:
            raise ValueError(f"repair exit code {self.exit_code!r} is not 0..255 (0 = any)")
        if self.mode == "label" and not self.label_key:
            raise ValueError("label mode needs a broken-pod label key (REPAIR_BROKEN_POD_LABEL_KEY)")


def _terminated_failure(term: object, s: RepairSettings) -> bool:
    if not isinstance(term, dict):
        return False
    if s.exit_code and term.get("exitCode") != s.exit_code:
        return False
    if s.termination_message and (term.get("message") or "").strip() != s.termination_message:
        return False
    return True


def _succeeded(state: dict | None) -> bool:
    term = (state or {}).get("terminated")
    return isinstance(term, dict) and (term.get("exitCode") == 0 or term.get("reason") == "Completed")


def validation_failure(pod: dict, s: RepairSettings) -> str:
    """Why the pod counts as broken by its validation container ('' when it does not)."""
    meta = pod.get("metadata") or {}
    if s.sidecar_annotation and s.sidecar_annotation not in (meta.get("annotations") or {}):
        return ""
    for st in (pod.get("status") or {}).get("initContainerStatuses") or []:
        if s.init_container_name and st.get("name") != s.init_container_name:
            continue
        state = st.get("state") or {}
        if _succeeded(state):
            continue
        if _terminated_failure((st.get("lastState") or {}).get("terminated"), s):
            return f"init container {st.get('name')} previously exited {s.exit_code or 'non-zero'}"
        if _terminated_failure(state.get("terminated"), s):
            return f"init container {st.get('name')} exited {s.exit_code or 'non-zero'}"
    return ""


def pod_ips(pod: dict) -> tuple[str, ...]:
    status = pod.get("status") or {}
    ips = [x["ip"] for x in status.get("podIPs") or [] if isinstance(x, dict) and x.get("ip")]
    if not ips and status.get("podIP"):
        ips = [status["podIP"]]
    return tuple(ips)


def uid_of(pod: dict) -> str:
    return (pod.get("metadata") or {}).get("uid", "")


def name_of(pod: dict) -> str:
    meta = pod.get("metadata") or {}
    return f"{meta.get('namespace', '')}/{meta.get('name', '')}"
