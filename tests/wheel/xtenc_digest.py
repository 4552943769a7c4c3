"""Print one SHA-256 over the entries the installed wheel encodes for every golden rule.

tools/wheel-check.sh runs it with the x86_64 wheel (natively) and the aarch64 wheel (under
qemu-user) and requires the same digest: x86_64 and aarch64 Linux are both LP64 and
little-endian with 8-byte aligned u64, so the x_tables entries the kernel receives must be
the same bytes on both. The x86_64 bytes are the ones the integration tier commits through
libiptc and reads back with iptables-save; equal digests carry that proof to aarch64.
Each rule contributes the compiled encoder's entry, or the Python encoder's when the
compiled path declines it, or a refusal marker when Python refuses it.

Usage: python xtenc_digest.py CONFORMANCE_DIR   (prints "<digest> <rules>")
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "integration"))
from nf_goldens import iptables_cases, iptables_tables  # noqa: E402


def main(argv: list[str]) -> int:
    import istio_cni
    from istio_cni.netfilter import xt, xtenc

    if "site-packages" not in Path(istio_cni.__file__).resolve().parts:
        print(f"xtenc_digest: istio_cni imported from {istio_cni.__file__}, not a wheel", file=sys.stderr)
        return 1
    conformance = Path(argv[1])
    digest = hashlib.sha256()
    rules = 0
    for case in iptables_cases(conformance):
        v4, v6 = iptables_tables(conformance / "istio-iptables" / "golden" / f"{case}.golden")
        for family, tables in ((4, v4), (6, v6)):
            specs = [r.spec for t in tables for r in t.rules]
            for spec, entry in zip(specs, xtenc.encode_specs(specs, family) if specs else (), strict=True):
                if entry is None:
                    try:
                        entry = b"py:" + xtenc.encode(xt.parse(spec, family))
                    except xt.XtParseError as e:
                        entry = f"refused:{e}".encode()
                digest.update(f"{case}/{family}/{' '.join(spec)}\n".encode())
                digest.update(len(entry).to_bytes(4, "little") + entry)
                rules += 1
    if not rules:
        print(f"xtenc_digest: no golden rules under {conformance}", file=sys.stderr)
        return 1
    print(digest.hexdigest(), rules)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
