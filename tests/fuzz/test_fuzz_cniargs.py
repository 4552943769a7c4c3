"""Differential fuzz: ``CNI_ARGS`` parsing against a plain rendering of libcni's ``LoadArgs``.

libcni (pkg/types/args.go), with the plugin's K8sArgs struct (CommonArgs + the K8S_* keys):
empty string -> nothing; split on ';'; every pair must split on '=' into exactly two parts;
a known key takes the value (``IgnoreUnknown`` through UnmarshallableBool: 1/true/0/false in
any case, else an error); unknown pairs are collected and are an error unless IgnoreUnknown
ended up true. Ours must accept exactly what that accepts, with the same values, and refuse
the rest with code 7.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st
from support import fastpath_py as _fastpath_py

from istio_cni import _fastpath, errors
from istio_cni.config import parse_k8s_args

FUZZ = settings.get_profile("fuzz")
KNOWN = ("K8S_POD_NAMESPACE", "K8S_POD_NAME", "K8S_POD_INFRA_CONTAINER_ID", "K8S_POD_UID")


def libcni_load_args(args: str):
    """(fields, None) or (None, error text), as LoadArgs into istio's K8sArgs."""
    fields = {"IgnoreUnknown": False}
    if args == "":
        return fields, None
    unknown = []
    for pair in args.split(";"):
        kv = pair.split("=")
        if len(kv) != 2:
            return None, f"ARGS: invalid pair {pair!r}"
        key, value = kv
        if key == "IgnoreUnknown":
            low = value.lower()
            if low in ("1", "true"):
                fields[key] = True
            elif low in ("0", "false"):
                fields[key] = False
            else:
                return None, "boolean unmarshal error"
        elif key in KNOWN:
            fields[key] = value
        else:
            unknown.append(pair)
    if unknown and not fields["IgnoreUnknown"]:
        return None, f"ARGS: unknown args {unknown!r}"
    return fields, None


KEYS = st.sampled_from(KNOWN + ("IgnoreUnknown", "IP", "OTHER", "", "ignoreunknown", "K8S_POD_NAME "))
VALUES = st.sampled_from(["", "1", "0", "true", "TRUE", "False", "t", "yes", "web-0", "default", "a=b",
                          "x;y", " ", "\u00e9", "1 "]) | st.text(max_size=6)
PAIR = st.builds(lambda k, v: f"{k}={v}", KEYS, VALUES) | st.text(max_size=8)
RAW = st.lists(PAIR, max_size=6).map(";".join) | st.text(alphabet="AK8S_=;IgnoreUnknw01", max_size=30)


@settings(FUZZ, max_examples=1000)
@given(RAW)
def test_k8s_args_match_libcni(raw):
    want, err = libcni_load_args(raw)
    if err is not None:
        with pytest.raises(errors.InvalidNetworkConfig):
            parse_k8s_args(raw)
        return
    got = parse_k8s_args(raw)
    assert (got.pod_namespace, got.pod_name, got.infra_container_id, got.pod_uid) == tuple(
        want.get(k, "") for k in KNOWN)


@settings(FUZZ, max_examples=300)
@given(RAW)
def test_compiled_and_twin_split_alike(raw):
    results = []
    for mod in (_fastpath, _fastpath_py):
        try:
            results.append(mod.parse_cni_args(raw))
        except ValueError:
            results.append("refused")
    assert results[0] == results[1]
