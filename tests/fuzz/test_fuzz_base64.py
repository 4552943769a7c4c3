"""Differential fuzz: ``_fastpath.b64decode`` (the kubeconfig's ``*-data`` fields on the ADD
path) against Go's ``base64.StdEncoding`` as client-go applies it, spelled as a regular
expression (padded RFC 4648 base64) plus ``binascii.a2b_base64`` for the bytes: both accept
with the same bytes, or both refuse (``ValueError``). The kubeconfig loader's own check
(``kubeconfig._Fields.b64``) accepts exactly the same strings. The twin (``fastpath_py``)
is that reference."""

from __future__ import annotations

import base64
import binascii
import re

from hypothesis import given, settings, strategies as st
from support import fastpath_py as _fastpath_py

from istio_cni import _fastpath

FUZZ = settings.get_profile("fuzz")

B64ISH = st.text(st.sampled_from(list("AQgw+/=Zz09") + ["\n", " ", "-", "_", "\x00", "é"]), max_size=16)


def reference(s: str):
    if not re.fullmatch(_fastpath_py.PADDED_B64, s, flags=re.ASCII):
        return ValueError
    return binascii.a2b_base64(s)


def ours(decode, s: str):
    try:
        return decode(s)
    except ValueError:
        return ValueError


@settings(FUZZ, max_examples=400)
@given(st.binary(max_size=64))
def test_round_trip_of_any_bytes(data):
    text = base64.b64encode(data).decode()
    assert _fastpath.b64decode(text) == data == _fastpath_py.b64decode(text)


@settings(FUZZ, max_examples=1500)
@given(B64ISH)
def test_same_answer_as_binascii_strict(s):
    want = reference(s)
    assert ours(_fastpath.b64decode, s) == want
    assert ours(_fastpath_py.b64decode, s) == want


@settings(FUZZ, max_examples=800)
@given(B64ISH)
def test_kubeconfig_check_accepts_what_the_decoder_accepts(s):
    from istio_cni.kubeconfig import KubeconfigError, _Fields

    try:
        checked = _Fields({"k": s}, "", "kc").b64("k")
    except KubeconfigError:
        checked = ValueError
    if "\r" in s or "\n" in s:  # the loader drops CR/LF first, as Go's decoder does
        return
    assert (checked is ValueError) == (reference(s) is ValueError)
