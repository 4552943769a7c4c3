"""``istio-cni`` entry point: the process kubelet/containerd exec per pod sandbox."""

import sys


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "validate":  # the istio-validation init container
        from .validate import main as validate_main

        sys.exit(validate_main(sys.argv[2:]))
    from . import k8s
    from .plugin import FUNCS
    from .skel import plugin_main

    k8s.ONE_SHOT_PROCESS = True  # lets the pod lookup skip encodings.idna (see k8s._ascii_idna)

    sys.exit(plugin_main(FUNCS))


if __name__ == "__main__":
    main()
