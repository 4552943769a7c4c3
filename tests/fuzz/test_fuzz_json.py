"""Differential fuzz: the plugin's JSON codec (``_fastpath``) against the standard library.

Contract (issue 13, item 2): ``json_loads`` returns exactly what ``json.loads`` returns, or
refuses with ``ValueError`` - and it may refuse only the documented classes: input that is
not strict UTF-8 or starts with a BOM (the stdlib sniffs encodings and decodes with
surrogatepass), NaN/Infinity, numbers beyond the double range, lone surrogates, nesting
deeper than 512. ``json_dumps`` output is valid UTF-8 (ASCII), equals
``json.dumps(v, separators=(",", ":"), allow_nan=False)`` and ``json.loads`` of it gives
the value back, lone surrogates included. The twin (``_fastpath_py``) must agree too.
"""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings, strategies as st
from support import fastpath_py as _fastpath_py

from istio_cni import _fastpath

FUZZ = settings.get_profile("fuzz")

scalars = (st.none() | st.booleans() | st.integers(-(2**80), 2**80)
           | st.floats(allow_nan=False, allow_infinity=False)
           | st.text(st.characters(), max_size=12)
           | st.text(st.characters(min_codepoint=0xD780, max_codepoint=0xE020), max_size=4))
values = st.recursive(scalars, lambda c: st.lists(c, max_size=4) | st.dictionaries(
    st.text(max_size=6) | st.text(st.characters(min_codepoint=0xD7F0, max_codepoint=0xE010), max_size=2),
    c, max_size=4), max_leaves=25)

JSONISH = st.sampled_from(list('{}[]:,"\\ \t\n\r0123456789.eE+-truefalsnNIfinity')
                          + ["\\u", "\\ud800", "\\udc00", "\\ud83d\\ude00", "\ufeff", "\x00"])


def same(a, b) -> bool:
    """Equality that also tells 1, 1.0 and True apart (and -0.0 from 0.0)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return a == b and math.copysign(1, a) == math.copysign(1, b)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    return a == b


def refusable(value) -> bool:
    """Does the stdlib's value fall in a class the plugin's decoder may refuse?"""
    todo, depth_of = [(value, 1)], 0
    while todo:
        v, d = todo.pop()
        if isinstance(v, str):
            try:
                v.encode("utf-8")
            except UnicodeEncodeError:
                return True
        elif isinstance(v, float) and not math.isfinite(v):
            return True
        elif isinstance(v, (list, dict)):
            depth_of = max(depth_of, d)
            items = list(v.items()) if isinstance(v, dict) else [(None, x) for x in v]
            for k, x in items:
                if k is not None:
                    todo.append((k, d))
                todo.append((x, d + 1))
    return depth_of > 512


def stdlib(data):
    try:
        return True, json.loads(data)
    except (ValueError, RecursionError):
        return False, None


def check_decode(data: bytes) -> None:
    """Accepted: the stdlib (bytes and str path) reads the same value. Refused: the input is
    not strict UTF-8, starts with a BOM, the stdlib refuses its text too, or the value is
    of a refusable class. (``json.loads`` of bytes also sniffs UTF-16/32: ``b'0\\x00'`` is 0.)"""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    ok_ref, ref = stdlib(text) if text is not None else (False, None)
    for codec in (_fastpath, _fastpath_py):
        try:
            got = codec.json_loads(data)
        except ValueError:
            assert text is None or text.startswith("\ufeff") or not ok_ref or refusable(ref), (codec.__name__, data)
            continue
        assert text is not None and ok_ref, (codec.__name__, data, got)
        assert same(got, ref), (codec.__name__, data, got, ref)
        ok_bytes, ref_bytes = stdlib(data)
        assert ok_bytes and same(got, ref_bytes), (codec.__name__, data, got, ref_bytes)


@settings(FUZZ, max_examples=400)
@given(values, st.sampled_from([None, 0, 2]), st.booleans(), st.data())
def test_decoder_matches_stdlib_on_documents_and_their_mutations(value, indent, ascii_only, data):
    text = json.dumps(value, indent=indent, ensure_ascii=ascii_only)
    raw = text.encode("utf-8", "surrogatepass")
    check_decode(raw)
    # byte-level mutations: replace, insert and delete bytes at random places
    muts = data.draw(st.lists(st.tuples(st.integers(0, max(len(raw), 1)), st.binary(max_size=3),
                                        st.integers(0, 3)), max_size=3))
    buf = bytearray(raw)
    for pos, ins, dele in muts:
        buf[pos:pos + dele] = ins
    check_decode(bytes(buf))


@settings(FUZZ, max_examples=400)
@given(st.lists(JSONISH, max_size=30).map("".join))
def test_decoder_matches_stdlib_on_jsonish_text(text):
    check_decode(text.encode("utf-8", "surrogatepass"))


@settings(FUZZ, max_examples=150)
@given(st.binary(max_size=64))
def test_decoder_matches_stdlib_on_bytes(raw):
    check_decode(raw)


@settings(FUZZ, max_examples=400)
@given(values)
def test_encoder_output_is_utf8_json_that_reads_back(value):
    if refusable(value):  # a surrogate code point: no JSON text reads back as it
        for codec in (_fastpath, _fastpath_py):
            with pytest.raises(ValueError):
                codec.json_dumps(value)
        return
    out = _fastpath.json_dumps(value)
    assert out.isascii()  # so valid UTF-8 on any stream
    assert out == json.dumps(value, separators=(",", ":"), allow_nan=False)
    assert same(json.loads(out), value)
    assert _fastpath_py.json_dumps(value) == out
    assert same(_fastpath.json_loads(out.encode()), value)


@settings(FUZZ, max_examples=60)
@given(st.integers(1, 1200), st.sampled_from("[{"))
def test_nesting_is_decoded_or_refused_never_crashes(depth, opener):
    closer = "]" if opener == "[" else "}"
    inner = '"k":' if opener == "{" else ""
    doc = (opener + inner) * depth
    doc = doc[:-len(inner)] if inner else doc
    text = (doc + "1" if opener == "[" else doc[: -1] + "1") + closer * depth
    check_decode(text.encode())
