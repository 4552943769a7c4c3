"""``istio-cni`` entry point: the process kubelet/containerd exec per pod sandbox."""

import sys


def main() -> None:
    from .plugin import FUNCS
    from .skel import plugin_main

    sys.exit(plugin_main(FUNCS))


if __name__ == "__main__":
    main()
