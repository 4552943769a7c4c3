"""Broken-pod detection (pure): upstream's rules plus the restartPolicy=Never case."""

from __future__ import annotations

import copy

import pytest
from support.injected_pods import injected_pod, validation_failed

from istio_cni_installer.repair import RepairSettings, validation_failure

S = RepairSettings(mode="label", node_name="node-a")


def test_previous_126_while_running_again_is_broken():
    assert "previously exited 126" in validation_failure(validation_failed(injected_pod("p")), S)


def test_current_126_without_restart_is_broken():
    # restartPolicy Never: no lastState ever (upstream misses these, istio/istio#49210).
    assert "exited 126" in validation_failure(validation_failed(injected_pod("p"), restarted=False), S)


def test_now_completed_is_not_broken_even_after_a_failure():
    pod = validation_failed(injected_pod("p"))
    pod["status"]["initContainerStatuses"][0]["state"] = {"terminated": {"exitCode": 0, "reason": "Completed"}}
    assert validation_failure(pod, S) == ""


@pytest.mark.parametrize("change", ["other_code", "no_annotation", "other_container", "fresh"])
def test_not_broken(change):
    pod = validation_failed(injected_pod("p"))
    st = pod["status"]["initContainerStatuses"][0]
    if change == "other_code":
        st["lastState"]["terminated"]["exitCode"] = 1
    elif change == "no_annotation":
        del pod["metadata"]["annotations"]["sidecar.istio.io/status"]
    elif change == "other_container":
        st["name"] = "some-init"
    else:
        pod = injected_pod("p")
    assert validation_failure(pod, S) == ""


def test_message_filter_and_any_exit_code():
    pod = validation_failed(injected_pod("p"), exit_code=3)
    any_code = S.replace(exit_code=0)
    assert validation_failure(pod, any_code)
    assert validation_failure(pod, any_code.replace(termination_message="iptables validation failed"))
    assert validation_failure(pod, any_code.replace(termination_message="something else")) == ""
    assert copy.deepcopy(pod) == pod  # detection never mutates the pod


@pytest.mark.parametrize("kw, msg", [
    ({"mode": "fix"}, "repair mode 'fix'"),
    ({"node_name": ""}, "node name"),
    ({"exit_code": 300}, "exit code 300"),
])
def test_bad_settings_are_named(kw, msg):
    args = {"mode": "label", "node_name": "n", **kw}
    with pytest.raises(ValueError, match=msg):
        RepairSettings(**args)


# Each REPAIR_* detection setting changes the verdict (the chart passes them; they must matter).

def test_custom_exit_code_is_detected_and_the_default_is_not():
    pod = validation_failed(injected_pod("p"), exit_code=7)
    assert validation_failure(pod, S) == ""
    assert "previously exited 7" in validation_failure(pod, S.replace(exit_code=7))
    assert validation_failure(validation_failed(injected_pod("p")), S.replace(exit_code=7)) == ""


def test_custom_init_container_name_is_detected_and_the_default_is_not():
    pod = validation_failed(injected_pod("p"))
    pod["status"]["initContainerStatuses"][0]["name"] = "mesh-check"
    assert validation_failure(pod, S) == ""
    assert "mesh-check" in validation_failure(pod, S.replace(init_container_name="mesh-check"))
    assert validation_failure(pod, S.replace(init_container_name=""))  # empty: any init container


def test_custom_sidecar_annotation_selects_the_pods():
    pod = validation_failed(injected_pod("p", annotations={"example.com/injected": "yes"}))
    assert validation_failure(pod, S.replace(sidecar_annotation="example.com/injected"))
    del pod["metadata"]["annotations"]["example.com/injected"]
    assert validation_failure(pod, S.replace(sidecar_annotation="example.com/injected")) == ""
    assert validation_failure(pod, S)  # the default annotation is still there


def test_custom_termination_message_must_match_trimmed():
    pod = validation_failed(injected_pod("p"))
    pod["status"]["initContainerStatuses"][0]["lastState"]["terminated"]["message"] = "  no rules\n"
    assert validation_failure(pod, S.replace(termination_message="no rules"))
    assert validation_failure(pod, S.replace(termination_message="iptables validation failed")) == ""


def test_label_mode_needs_a_label_key():
    with pytest.raises(ValueError, match="label key"):
        RepairSettings(mode="label", node_name="n", label_key="")
