"""Conflist splicing against upstream's goldens, and kubelet's file-selection rules."""

from __future__ import annotations

import json
import shutil

import pytest

from istio_cni_installer import cniconfig as cc
from istio_cni_installer.conflist import ConfList, Waiting
from istio_cni_installer.settings import parse


def modern(conformance):
    return conformance / "install" / "modern"


@pytest.mark.parametrize("existing", ["bridge.conf", "list.conflist", "list-with-istio.conflist"])
def test_insert_matches_upstream_golden(conformance, existing):
    d = modern(conformance)
    entry = json.loads((d / "istio-cni.conf").read_text())
    conf = cc.parse_bytes((d / existing).read_bytes(), existing)
    out = cc.render(cc.insert(conf, entry, "upstream"), "upstream")
    assert out.decode() == (d / f"{existing}.golden").read_text()


@pytest.mark.parametrize("existing,golden", [
    ("list-no-istio.conflist", "istio-owned.conflist.golden"),
    ("bridge.conf", "istio-owned-bridge.conflist.golden"),
])
def test_istio_owned_variants_match_golden(conformance, existing, golden):
    d = modern(conformance)
    entry = json.loads((d / "istio-cni.conf").read_text())
    entry["ambient_enabled"] = True  # upstream's owned-config goldens come from ambient mode
    conf = cc.parse_bytes((d / existing).read_bytes(), existing)
    assert cc.render(cc.insert(conf, entry, "upstream"), "upstream").decode() == (d / golden).read_text()


def test_invalid_inputs_are_refused_with_a_reason(conformance):
    d = modern(conformance)
    entry = json.loads((d / "istio-cni.conf").read_text())
    with pytest.raises(cc.ConfigFileError, match="neither 'plugins' nor 'type'"):
        cc.insert(json.loads((d / "invalid-map.conflist").read_text()), entry)
    with pytest.raises(cc.ConfigFileError, match="not a JSON object"):
        cc.insert(json.loads((d / "invalid-arr.conflist").read_text()), entry)
    with pytest.raises(cc.ConfigFileError, match="plugin entry"):
        cc.insert(json.loads((d / "list.conflist").read_text()), [])
    with pytest.raises(cc.ConfigFileError, match="invalid-arr.conflist: top level is list"):
        cc.parse_bytes((d / "invalid-arr.conflist").read_bytes(), "invalid-arr.conflist")


def test_reinsert_is_idempotent_and_never_duplicates(conformance):
    d = modern(conformance)
    entry = {"type": "istio-cni", "name": "istio-cni", "x": 1}
    conf = json.loads((d / "list-with-istio.conflist").read_text())
    once = cc.insert(conf, entry)
    twice = cc.insert(once, entry)
    assert once == twice
    assert [p["type"] for p in twice["plugins"]] == ["bridge", "tuning", "istio-cni"]
    assert cc.entry_in_place(twice, entry)
    assert not cc.entry_in_place(conf, entry)


def test_preserve_style_keeps_key_order_and_conf_version(conformance):
    d = modern(conformance)
    conf = json.loads((d / "list.conflist").read_text())
    out = json.loads(cc.render(cc.insert(conf, {"type": "istio-cni"}, "preserve")))
    assert list(out["plugins"][0]) == list(conf["plugins"][0])  # "type" first, as in the input
    bridge = json.loads((d / "bridge.conf").read_text())
    wrapped = cc.insert(bridge, {"type": "istio-cni"}, "preserve")
    assert wrapped["cniVersion"] == "0.4.0" and wrapped["name"] == "dbnet"
    assert "cniVersion" not in wrapped["plugins"][0]


def test_remove_restores_list_byte_for_byte(conformance):
    pre = conformance / "install" / "seed" / "pre" / "calico.conflist"
    conf = json.loads(pre.read_text())
    with_us = cc.insert(conf, {"type": "istio-cni"}, "seed")
    assert cc.render(cc.remove(with_us), "seed") == pre.read_bytes()


def test_find_primary_follows_kubelet_rules(conformance, tmp_path):
    pre = conformance / "install" / "seed" / "pre"
    for i, name in enumerate(["non_json.conf", "bad_minikube_cni.conf", "noname_calico.conflist",
                              "noplugins_calico.conflist", "nover_calico.conflist", "calico.conflist"]):
        shutil.copy(pre / name, tmp_path / f"0{i}-{name}")
    (tmp_path / "00-aaa.json").write_text('{"type": "x"}')  # other extensions are not configs
    (tmp_path / "00-aab.conflist").write_text('{"name": "x", "plugins": [')  # partial write
    skipped: list = []
    # nover (no cniVersion) is accepted, as libcni does
    assert cc.find_primary(tmp_path, skipped=skipped) == "04-nover_calico.conflist"
    assert any("00-aab.conflist: not JSON" in str(s) for s in skipped)
    assert any("01-bad_minikube_cni.conf: .conf has no string 'type'" in str(s) for s in skipped)
    assert any("02-noname_calico.conflist: conflist has no 'name'" in str(s) for s in skipped)
    assert any("03-noplugins_calico.conflist: conflist has no 'plugins'" in str(s) for s in skipped)
    assert cc.find_primary(tmp_path, exclude=("04-nover_calico.conflist",)) == "05-calico.conflist"


def _settings(tmp_path, **env):
    base = {"MOUNTED_CNI_NET_DIR": str(tmp_path), "KUBERNETES_NODE_NAME": "n"}
    base.update(env)
    return parse([], base)


@pytest.mark.parametrize("specified,expected", [
    ("list.conflist", "list.conflist"),
    ("list.conf", "list.conflist"),        # the .conf was converted by an earlier run
    ("bridge.conflist", "bridge.conf"),
    ("never-created.conf", None),
    ("", "bridge.conf"),
])
def test_target_resolution_like_upstream(conformance, tmp_path, specified, expected):
    for n in ("bridge.conf", "list.conflist"):
        shutil.copy(modern(conformance) / n, tmp_path / n)
    cl = ConfList(_settings(tmp_path, CNI_CONF_NAME=specified))
    assert cl.primary_name() == expected
    if expected is None:
        with pytest.raises(Waiting):
            cl.plan()


def test_install_converts_conf_and_check_sees_drift(conformance, tmp_path):
    shutil.copy(modern(conformance) / "bridge.conf", tmp_path / "10-bridge.conf")
    (tmp_path / "10-bridge.conf").chmod(0o640)
    cl = ConfList(_settings(tmp_path))
    assert cl.check()
    assert cl.install() == "10-bridge.conflist"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["10-bridge.conflist"]
    assert (tmp_path / "10-bridge.conflist").stat().st_mode & 0o777 == 0o640  # mode kept
    assert cl.check() == [] and cl.install() is None  # in place: no second write
    # the primary agent writes its .conf again: it sorts first, so we are bypassed
    shutil.copy(modern(conformance) / "bridge.conf", tmp_path / "10-bridge.conf")
    assert any("single-plugin .conf" in p for p in cl.check())
    cl.install()
    assert cl.check() == []
    assert cl.uninstall() == ["10-bridge.conflist"]
    left = json.loads((tmp_path / "10-bridge.conflist").read_text())
    assert [p["type"] for p in left["plugins"]] == ["bridge"]


def test_standalone_and_owned_modes(conformance, tmp_path):
    shutil.copy(modern(conformance) / "list.conflist", tmp_path / "10-list.conflist")
    before = (tmp_path / "10-list.conflist").read_bytes()
    owned = ConfList(_settings(tmp_path, ISTIO_OWNED_CNI_CONFIG="true"))
    assert owned.install() == "02-istio-cni.conflist"
    assert (tmp_path / "10-list.conflist").read_bytes() == before  # primary untouched
    assert cc.find_primary(tmp_path) == "02-istio-cni.conflist"
    assert owned.check() == []
    assert owned.uninstall() == ["02-istio-cni.conflist"]
    alone = ConfList(_settings(tmp_path, CHAINED_CNI_PLUGIN="false"))
    assert alone.install() == "YYY-istio-cni.conf"
    conf = json.loads((tmp_path / "YYY-istio-cni.conf").read_text())
    assert conf["type"] == "istio-cni" and conf["cniVersion"] == "0.3.1"
    assert (tmp_path / "10-list.conflist").read_bytes() == before
    assert alone.uninstall() == ["YYY-istio-cni.conf"]


def test_generated_entry_has_upstream_and_our_keys(tmp_path):
    s = _settings(tmp_path, LOOKUP_DEADLINE_SECONDS="4", EXCLUDE_NAMESPACES="kube-system, istio-system")
    e = cc.entry_for(s)
    assert e["type"] == "istio-cni" and e["ambient_enabled"] is False
    assert e["kubernetes"] == {"kubeconfig": "/var/run/istio-cni/istio-cni-kubeconfig",
                               "cni_bin_dir": "/opt/cni/bin",
                               "exclude_namespaces": ["kube-system", "istio-system"]}
    assert e["netfilter_backend"] == "auto" and e["lookup_deadline_seconds"] == 4.0
    assert "lookup_retry_interval_seconds" not in e


def test_template_placeholders_filled(conformance, tmp_path):
    s = _settings(tmp_path, CNI_NETWORK_CONFIG_FILE=str(modern(conformance) / "istio-cni.conf.template"),
                  LOG_LEVEL="debug", KUBECFG_FILE_NAME="kc")
    e = cc.entry_for(s)
    assert e["plugin_log_level"] == "debug" and e["kubernetes"]["kubeconfig"] == "kc"
