"""Kubernetes syntax checks for settings that end up in API requests (labels, selectors).

A bad label key or selector would otherwise surface only as HTTP 400s in the repair
controller's logs; checking at start-up stops the installer with the setting named.
Each function returns the (trimmed) value or raises ValueError with the reason.
"""

from __future__ import annotations

import re

_DNS_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_NAME = r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
_LABEL_KEY = re.compile(rf"^({_DNS_LABEL}(\.{_DNS_LABEL})*/)?{_NAME}$")
_LABEL_VALUE = re.compile(rf"^({_NAME})?$")
_SELECTOR_TERM = re.compile(
    r"^\s*(!?\s*(?P<k1>[^\s=!(),]+)"  # key / !key
    r"|(?P<k2>[^\s=!(),]+)\s*(==|!=|=)\s*(?P<v>[^\s=!(),]*)"  # key=value, key!=value
    r"|(?P<k3>[^\s=!(),]+)\s+(in|notin)\s*\(\s*[^()]*\))\s*$"
)  # key in (a,b)
_FIELD_TERM = re.compile(r"^\s*[A-Za-z0-9_.\-]+\s*(==|!=|=)\s*[^,=!]*\s*$")


def label_key(s: str) -> str:
    if not _LABEL_KEY.match(s) or len(s.rsplit("/", 1)[0]) > 253:
        raise ValueError("expected a label key such as cni.istio.io/uninitialized")
    return s


def label_value(s: str) -> str:
    if not _LABEL_VALUE.match(s):
        raise ValueError("expected a label value (at most 63 of A-Z a-z 0-9 - _ ., alphanumeric at both ends)")
    return s


def selector_terms(s: str) -> list[str]:
    """Split a label selector at the commas outside ``in (...)`` lists."""
    terms, depth, cur = [], 0, ""
    for c in s:
        depth += (c == "(") - (c == ")")
        if c == "," and depth == 0:
            terms.append(cur)
            cur = ""
        else:
            cur += c
    return terms + [cur]


def label_selector(s: str) -> str:
    if s.strip() and not all(_SELECTOR_TERM.match(t) for t in selector_terms(s)):
        raise ValueError("expected a label selector such as app=x,tier!=db or env in (a,b)")
    return s.strip()


def field_selector(s: str) -> str:
    if s.strip() and not all(_FIELD_TERM.match(t) for t in s.split(",")):
        raise ValueError("expected a field selector such as status.phase=Running")
    return s.strip()
