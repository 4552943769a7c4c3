"""The 2019 installer's eleven cases, run against the real ``install-cni`` process.

Each case copies upstream's pre files into an empty conf dir as ``0<i>-<name>``, starts the
installer with upstream's environment (seed layout, template with __KUBECONFIG_FILEPATH__),
waits for readiness, byte-compares the result, sends SIGTERM and byte-compares the cleanup.
"""

from __future__ import annotations

import json
import shutil

import pytest
import yaml
from support.installer_fixtures import InstallerProcess, project_token

from istio_cni_installer.standin import is_standin

SNIPPET = json.dumps({"type": "istio-cni", "log_level": "info", "kubernetes": {
    "kubeconfig": "__KUBECONFIG_FILEPATH__", "cni_bin_dir": "/opt/cni/bin",
    "exclude_namespaces": ["istio-system"]}})

CALICO_X, MINI_X, MINI_CLEAN = "10-calico.conflist-istioconfig", "minikube_cni.conflist.expected", \
    "minikube_cni.conflist.clean"
CASES = [  # (name, pre files in order, CNI_CONF_NAME, result file, expected, expected after cleanup)
    ("explicit .conflist", ["calico.conflist"], "00-calico.conflist", "00-calico.conflist", CALICO_X, None),
    ("explicit .conf", ["minikube_cni.conf"], "00-minikube_cni.conf", "00-minikube_cni.conflist",
     MINI_X, MINI_CLEAN),
    ("first file .conflist", ["calico.conflist", "minikube_cni.conf"], "", "00-calico.conflist", CALICO_X, None),
    ("first file .conf", ["minikube_cni.conf", "calico.conflist"], "", "00-minikube_cni.conflist",
     MINI_X, MINI_CLEAN),
    ("skip non-json for .conf", ["non_json.conf", "minikube_cni.conf", "calico.conflist"], "",
     "01-minikube_cni.conflist", MINI_X, MINI_CLEAN),
    ("skip non-json for .conflist", ["non_json.conf", "calico.conflist", "minikube_cni.conf"], "",
     "01-calico.conflist", CALICO_X, None),
    ("skip invalid .conf for .conf", ["bad_minikube_cni.conf", "minikube_cni.conf", "calico.conflist"], "",
     "01-minikube_cni.conflist", MINI_X, MINI_CLEAN),
    ("skip invalid .conf for .conflist", ["bad_minikube_cni.conf", "calico.conflist", "minikube_cni.conf"],
     "", "01-calico.conflist", CALICO_X, None),
    ("skip invalid .conflists for .conf", ["noname_calico.conflist", "noplugins_calico.conflist",
                                           "minikube_cni.conf", "calico.conflist"], "",
     "02-minikube_cni.conflist", MINI_X, MINI_CLEAN),
    ("skip invalid .conflists for .conflist", ["noname_calico.conflist", "noplugins_calico.conflist",
                                               "calico.conflist", "minikube_cni.conf"], "",
     "02-calico.conflist", CALICO_X, None),
    ("missing .conf name with .conflist", ["calico.conflist"], "00-calico.conf", "00-calico.conflist",
     CALICO_X, None),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_seed_case(case, conformance, plugin_bundle, host_layout):
    name, pre_files, conf_name, result, expected, clean = case
    seed = conformance / "install" / "seed"
    for i, f in enumerate(pre_files):
        shutil.copy(seed / "pre" / f, host_layout.net_dir / f"0{i}-{f}")
    originals = {p.name: p.read_bytes() for p in host_layout.net_dir.iterdir()}
    sa = host_layout.root / "seed-sa"
    project_token(sa, {n: (seed / "k8s_svcacct" / n).read_bytes() for n in ("token", "ca.crt", "namespace")})
    run_dir = host_layout.root / "run"
    env = host_layout.env(
        plugin_bundle, CNI_NETWORK_CONFIG=SNIPPET, CNI_CONF_NAME=conf_name, CONFLIST_STYLE="seed",
        CNI_NET_DIR="/etc/cni/net.d", CNI_AGENT_RUN_DIR="/etc/cni/net.d",
        MOUNTED_CNI_AGENT_RUN_DIR=str(run_dir), KUBECFG_FILE_NAME="ZZZ-istio-cni-kubeconfig",
        SERVICE_ACCOUNT_DIR=str(sa), KUBERNETES_SERVICE_HOST="10.110.0.1", KUBERNETES_SERVICE_PORT="443")
    p = InstallerProcess(env)
    try:
        p.wait_ready()
        assert (host_layout.net_dir / result).read_bytes() == (seed / "expected" / expected).read_bytes()
        assert (host_layout.bin_dir / "istio-cni").exists()
        # the kubeconfig is the seed's, in today's layout (host not bracketed, keys sorted)
        kc = (run_dir / "ZZZ-istio-cni-kubeconfig")
        assert kc.stat().st_mode & 0o777 == 0o600
        got, want = yaml.safe_load(kc.read_text()), yaml.safe_load((seed / "expected" /
                                                                     "ZZZ-istio-cni-kubeconfig.expected").read_text())
        assert got["users"] == want["users"]
        assert got["clusters"][0]["cluster"]["certificate-authority-data"] == \
            want["clusters"][0]["cluster"]["certificate-authority-data"]
        assert got["clusters"][0]["cluster"]["server"] == "https://10.110.0.1:443"
        token = (seed / "k8s_svcacct" / "token").read_text().strip()
        assert not any(token in line for line in p.raw), "the token must never be logged"
    finally:
        rc = p.terminate()
    assert rc == 0
    after = host_layout.net_dir / result
    if clean is None:
        assert after.read_bytes() == originals[result]
    else:
        assert after.read_bytes() == (seed / "expected" / clean).read_bytes()
    assert is_standin((host_layout.bin_dir / "istio-cni").read_text())  # the DEL-only stand-in stays
    assert not (host_layout.bin_dir / "istio-cni.d").exists()
    assert not (run_dir / "ZZZ-istio-cni-kubeconfig").exists()
    # every other file in the conf dir is untouched
    for n, data in originals.items():
        if n != result and (host_layout.net_dir / n).exists():
            assert (host_layout.net_dir / n).read_bytes() == data
