"""CPython's builtin SHA-2 module (3.12+; ``_sha256`` before). typeshed has no stub for it;
``netfilter.nft`` imports it directly because ``hashlib`` costs milliseconds on the ADD path."""

from _hashlib import HASH

def sha256(string: bytes = ..., *, usedforsecurity: bool = ...) -> HASH: ...
