"""Damage to a file's bytes, for the fuzz tests of files the plugin or its front read back (the
TLS session, the pod GET's description): flipped, cut and inserted bytes at any offset."""

from __future__ import annotations

from hypothesis import strategies as st

# (offset, how, bytes): applied in order; the offset wraps around the current length.
EDITS = st.lists(
    st.tuples(st.integers(0, 4000), st.sampled_from(["flip", "cut", "insert"]), st.binary(min_size=1, max_size=8)),
    min_size=1, max_size=4,
)


def damaged(data: bytes, edits) -> bytes:
    """``data`` with ``edits`` (drawn from ``EDITS``) applied."""
    out = bytearray(data)
    for at, how, chunk in edits:
        at %= len(out) + 1
        if how == "flip" and at < len(out):
            out[at] ^= chunk[0] or 0xFF
        elif how == "cut":
            del out[at:at + len(chunk)]
        else:
            out[at:at] = chunk
    return bytes(out)
