"""The DEL-only stand-in that uninstall leaves at ``<bin>/istio-cni`` instead of removing it.

Why: a runtime may DEL a pod with the conflist cached at ADD time (libcni's
``GetNetworkListCachedConfig``, cache in ``/var/lib/cni/results/<net>-<id>-<ifname>``), which
still names ``istio-cni`` after our entry left the live conflist. With no executable of that name
in CNI_PATH, libcni fails the DEL with "failed to find plugin" and the pod sticks in Terminating
(istio/istio#58572). Our DEL has no host-side state (the redirect rules live and die with the pod
netns), so a DEL that does nothing is a correct DEL once the plugin is gone.

The stand-in is a POSIX ``/bin/sh`` script (the bundle with its interpreter is removed; the host
may have no Python). It answers:

* DEL, GC: exit 0, no output (nothing to undo or collect on the host).
* CHECK: exit 0: the rules ADD committed stay in the netns, and failing CHECK would only make a
  runtime rebuild the pod.
* VERSION: the plugin's own supported-versions document.
* ADD: fails closed with one CNI error (code 11, try again later) and exit 1: no pod may ever
  start unredirected through the stand-in.
* STATUS: CNI error 50 (plugin not available): it cannot serve ADD.
* anything else: CNI error 4, as the plugin answers an unknown CNI_COMMAND.

stdin is drained with a bounded ``dd`` (at most 16 reads of 64 KiB) so the runtime's write does
not fail, and never parsed beyond finding the ``cniVersion`` for the error document. The second
line carries ``MARK``: a later install recognises the stand-in and replaces it with the launcher.
"""

from __future__ import annotations

import json

from istio_cni.versions import LATEST, SUPPORTED_VERSIONS

MARK = "# istio-cni DEL-only stand-in written by install-cni on uninstall"
STDIN_READS, STDIN_BLOCK = 16, 65536


def version_document() -> str:
    """The VERSION answer, the same document the plugin prints (skel.plugin_main)."""
    return json.dumps({"cniVersion": LATEST, "supportedVersions": list(SUPPORTED_VERSIONS)}, separators=(",", ":"))


def is_standin(content: str | bytes) -> bool:
    """Is ``content`` (the text or the bytes of ``<bin>/istio-cni``) the stand-in? The
    installed plugin is the compiled front, an ELF file: pass its bytes."""
    text = content.decode("utf-8", "replace") if isinstance(content, bytes) else content
    lines = text.split("\n", 2)
    return len(lines) > 1 and lines[0] == "#!/bin/sh" and lines[1] == MARK


def standin_text() -> str:
    versions = "|".join(SUPPORTED_VERSIONS)
    # No user-controlled byte reaches the output unchecked: the version is echoed only after it
    # matched one of ours, the rest is fixed text.
    return f"""#!/bin/sh
{MARK}
# istio-cni was uninstalled from this node. Pods set up with it may still be deleted by a
# runtime that runs DEL from the config cached at ADD (libcni GetNetworkListCachedConfig), which
# still names istio-cni; this script answers those DELs so no pod sticks in Terminating.
# It never sets up a pod: ADD fails. Remove it (rm this file) once no pod created before the
# uninstall remains on the node; installing istio-cni again replaces it.
conf=$(dd bs={STDIN_BLOCK} count={STDIN_READS} 2>/dev/null) || conf=
fail() {{
  v=$(printf '%s' "$conf" | tr ',{{}}' '\\n\\n\\n' | sed -n 's/^[[:space:]]*"cniVersion"[[:space:]]*:[[:space:]]*"\\([0-9.]*\\)"[[:space:]]*$/\\1/p' | head -n 1)
  case "$v" in {versions}) ;; *) v={LATEST} ;; esac
  printf '{{"cniVersion":"%s","code":%s,"msg":"%s","details":"%s"}}\\n' "$v" "$1" "$2" "$3"
  exit 1
}}
case "$CNI_COMMAND" in
  DEL|GC|CHECK) exit 0 ;;
  VERSION) printf '%s\\n' '{version_document()}'; exit 0 ;;
  ADD) fail 11 "istio-cni is not installed on this node" "only its DEL-only stand-in is left after uninstall; install istio-cni to start pods with this network" ;;
  STATUS) fail 50 "plugin not available" "istio-cni was uninstalled from this node (DEL-only stand-in)" ;;
  '') echo "istio-cni DEL-only stand-in (plugin uninstalled)" >&2; exit 0 ;;
  *) fail 4 "invalid necessary environment variables" "unknown CNI_COMMAND" ;;
esac
"""  # noqa: E501  (the script's own lines; wrapping them would change the installed file)
