"""``install-cni`` entry point: parse settings (a bad one stops start-up), then run the node program."""

from __future__ import annotations

import sys

from istio_cni.log import log

from .agent.services import node_services
from .app import App
from .settings import SettingError, parse


def main(argv: list[str] | None = None) -> int:
    try:
        settings = parse(argv)
    except SettingError as e:
        log.error("bad setting, not starting", setting=e.setting, value=str(e.value)[:200], reason=e.reason)
        print(f"install-cni: {e}", file=sys.stderr)
        return 2
    log.set_level(settings.log_level)

    try:
        app = App(settings, service_factories=[node_services])
        return app.run_until_signal()
    except (OSError, ValueError) as e:
        log.error("cannot start", error=str(e))
        print(f"install-cni: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
