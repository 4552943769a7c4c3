"""``istio-cni`` entry point: the process kubelet/containerd exec per pod sandbox."""

import sys


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "validate":  # the istio-validation init container
        from .validate import main as validate_main

        sys.exit(validate_main(sys.argv[2:]))
    from . import transport
    from .plugin import FUNCS
    from .skel import plugin_main

    transport.ONE_SHOT_PROCESS = True  # lets TLS skip encodings.idna (transport._ascii_idna)

    sys.exit(plugin_main(FUNCS))


if __name__ == "__main__":
    main()
