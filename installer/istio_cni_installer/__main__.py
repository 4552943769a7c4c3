"""``install-cni`` entry point (filled in by the installer work)."""

import sys


def main(argv: list[str] | None = None) -> int:
    print("install-cni: not implemented yet", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
