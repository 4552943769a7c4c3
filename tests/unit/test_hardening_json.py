"""Regression tests (issue 13, item 2): the JSON codec equals the stdlib or refuses."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from support import fastpath_py as _fastpath_py

import istio_cni
from istio_cni import _fastpath

# The directory istio_cni is imported from (src/ in the dev venv, site-packages when `make
# wheel` tests an installed wheel): the child interpreters run with -I -S and get only this.
SRC = Path(istio_cni.__file__).resolve().parent.parent


@pytest.fixture(params=["c", "py"])
def codec(request):
    return _fastpath if request.param == "c" else _fastpath_py


def test_issue_example_surrogate_escapes_are_refused(codec):
    # the stdlib decodes this to '\ud800' + U+10000: a lone surrogate no peer can mean
    doc = b'"\\ud800\\ud800\\udc00"'
    assert json.loads(doc) == "\ud800\U00010000"
    with pytest.raises(ValueError):
        codec.json_loads(doc)


def test_valid_surrogate_pair_escape_decodes_like_stdlib(codec):
    assert codec.json_loads(b'"\\ud83d\\ude00"') == json.loads(b'"\\ud83d\\ude00"') == "\U0001F600"


@pytest.mark.parametrize("doc", [b'{"cniVersion":"\\ud800"}', b'["\\udc00"]', b'{"\\uDBFF":1}'])
def test_lone_surrogate_escapes_are_refused(codec, doc):
    with pytest.raises(ValueError):
        codec.json_loads(doc)


@pytest.mark.parametrize("doc", [b"NaN", b"[Infinity]", b"-Infinity", b"1e400", b"\xef\xbb\xbf{}", b"\xff",
                                 b'"\xed\xa0\x80"', b"[" * 513 + b"]" * 513, b"[" * 100000, b"0\x00",
                                 b"\xff\xfe{\x00}\x00"])
def test_refused_where_stdlib_would_read_something_else(codec, doc):
    with pytest.raises(ValueError):
        codec.json_loads(doc)


@pytest.mark.parametrize("value", ["\ud800", {"k\udcff": 1}, ["\ud800\udc00"]])
def test_encoder_refuses_surrogate_code_points(codec, value):
    # '\ud800\udc00' as two code points would read back as one astral character
    with pytest.raises(ValueError):
        codec.json_dumps(value)


@pytest.mark.parametrize("value", [{"a": "\u00e9\U0001F600\x00\x7f", "b": [1, 2.5, None, True]}, "", -0.0, 2**70])
def test_encoder_output_is_ascii_and_reads_back(codec, value):
    out = codec.json_dumps(value)
    assert out.isascii()
    assert out == json.dumps(value, separators=(",", ":"))
    assert json.loads(out) == value


def test_encoder_refuses_nan_and_cycles():
    with pytest.raises(ValueError):
        _fastpath.json_dumps([float("inf")])
    cyclic: list = []
    cyclic.append(cyclic)
    with pytest.raises(ValueError):
        _fastpath.json_dumps(cyclic)


def test_errors_without_the_json_package_loaded():
    # Python <= 3.11's _json raises JSONDecodeError through sys.modules["json.decoder"]
    # without importing it: the plugin (which never imports json) got a SystemError -> 999.
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from istio_cni._fastpath import json_loads\n"
            "assert 'json' not in sys.modules\n"
            "for doc in (b'{\"a\":', b'{\"a\" 1}', b'\"abc', b'[1,]'):\n"
            "    try:\n        json_loads(doc)\n    except ValueError as e:\n        print(type(e).__name__)\n")
    out = subprocess.run([sys.executable, "-I", "-S", "-c", code, str(SRC)], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert len(out.stdout.split()) == 4


def test_codec_keeps_json_off_the_import_path():
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from istio_cni._fastpath import json_loads, json_dumps\n"
            "json_dumps(json_loads(b'{\"a\": [1, 2.5, \"\\\\u00e9\"]}'))\n"
            "print(','.join(m for m in ('json', 're', 'enum') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-I", "-S", "-c", code, str(SRC)], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""
