"""Which config file we own or edit, whether it is in place, and writing/removing our entry.

Three modes: chained (our entry spliced into the primary's file, the default), Istio-owned
(opt-in: our own copy of the primary list that sorts first) and standalone (our own file).
``check`` is side-effect free and cheap; ``install`` writes only when ``check`` finds a problem,
because other CNI agents watch this directory and every write wakes them up.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from istio_cni.log import log
from istio_cni.value import Value

from . import cniconfig as cc
from .atomic import remove_atomic, write_atomic

if TYPE_CHECKING:
    from .settings import Settings

STANDALONE_DEFAULT = "YYY-istio-cni.conf"
NEW_FILE_MODE = 0o600


class Waiting(Exception):
    """No primary CNI config yet: nothing to insert into (readiness stays false)."""


class Plan(Value):
    __slots__ = ("source", "dest", "desired", "remove", "mode", "source_sig")
    _defaults = {"source": None, "remove": None, "source_sig": None}
    source: str | None  # the primary config we read (None: standalone file)
    dest: str  # the file we write
    desired: dict
    remove: str | None  # the source, when a .conf becomes a .conflist
    mode: int
    source_sig: tuple[int, int, int] | None  # (inode, mtime ns, size) of the source as read


def _sig(p: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(p)
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


class ConfList:
    def __init__(self, settings: Settings, entry: dict | None = None) -> None:
        self.s = settings
        self.dir = Path(settings.mounted_cni_net_dir)
        self.entry = entry if entry is not None else cc.entry_for(settings)
        self.style = settings.conflist_style
        self._warned_order = False
        self._reported_invalid: dict[str, str] = {}  # file name -> fingerprint of what we logged

    # --- planning ---------------------------------------------------------------------------

    def _explicit_name(self) -> str | None:
        name = self.s.cni_conf_name
        if (self.dir / name).is_file():
            return name
        if name.endswith(".conf") and (self.dir / (name + "list")).is_file():
            return name + "list"  # the .conf was converted earlier (istio/cni#85)
        if name.endswith(".conflist") and (self.dir / name[:-4]).is_file():
            return name[:-4]
        return None

    def primary_name(self, skipped: list | None = None) -> str | None:
        if self.s.chained and self.s.cni_conf_name and not self.s.istio_owned_config:
            return self._explicit_name()
        exclude = (self.s.istio_owned_config_filename,) if self.s.istio_owned_config else ()
        found: list = []
        name = cc.find_primary(self.dir, exclude, found)
        self._report_invalid(found)
        if skipped is not None:
            skipped.extend(found)
        return name

    def _report_invalid(self, errors: list) -> None:
        """Log each invalid conf file passed over, once per content: the loop re-plans on every
        event, and a file nobody fixes must not flood the log; a changed content is news."""
        for e in errors:
            if self._reported_invalid.get(e.file) != e.fingerprint:
                self._reported_invalid[e.file] = e.fingerprint
                log.warning("skipping invalid CNI config file", file=e.file, reason=str(e))
        current = {e.file for e in errors}
        for name in [
            n
            for n in self._reported_invalid  # forget files that are gone
            if n not in current and not os.path.lexists(self.dir / n)
        ]:
            del self._reported_invalid[name]

    def plan(self) -> Plan:
        if not self.s.chained:
            dest = self.s.cni_conf_name or STANDALONE_DEFAULT
            desired = dict(self.entry)
            if "cniVersion" not in desired:
                desired = {"cniVersion": "0.3.1", **desired}
            return Plan(dest=dest, desired=desired, mode=NEW_FILE_MODE)
        skipped: list = []
        name = self.primary_name(skipped)
        if name is None:
            why = f" (skipped: {'; '.join(map(str, skipped))})" if skipped else ""
            raise Waiting(f"no primary CNI config in {self.dir} yet{why}")
        path = self.dir / name
        sig = _sig(path)
        conf = cc.read_conf(path)
        desired = cc.insert(conf, self.entry, self.style)
        if self.s.istio_owned_config:
            return Plan(
                source=name,
                dest=self.s.istio_owned_config_filename,
                desired=desired,
                mode=NEW_FILE_MODE,
                source_sig=sig,
            )
        dest = name if cc.is_list(conf) else cc.listed_name(name)
        mode = os.stat(path).st_mode & 0o7777
        return Plan(
            source=name, dest=dest, desired=desired, mode=mode, remove=name if dest != name else None, source_sig=sig
        )

    # --- checking ---------------------------------------------------------------------------

    def check(self) -> list[str]:
        """Human-readable problems; [] means our config is in place."""
        try:
            plan = self.plan()
        except (Waiting, cc.ConfigFileError) as e:
            return [str(e)]
        return self._problems(plan)

    def _problems(self, plan: Plan) -> list[str]:
        problems = []
        if plan.remove and (self.dir / plan.remove).exists():
            problems.append(f"{plan.remove} is a single-plugin .conf; it must become {plan.dest}")
        dest = self.dir / plan.dest
        try:
            current = cc.read_conf(dest)
        except cc.ConfigFileError as e:
            problems.append(f"{plan.dest} missing or invalid: {e}")
        else:
            if current != plan.desired:
                problems.append(f"{plan.dest} does not hold our istio-cni entry as the last plugin")
        if self.s.istio_owned_config and plan.source and plan.source < plan.dest and not self._warned_order:
            self._warned_order = True
            log.warning(
                "the Istio-owned conflist sorts after the primary's: kubelet will not use it",
                owned=plan.dest,
                primary=plan.source,
            )
        return problems

    # --- writing ----------------------------------------------------------------------------

    def install(self) -> str | None:
        """Make the config right; returns the file written, or None when it already was."""
        for _attempt in range(3):
            plan = self.plan()
            if not self._problems(plan):  # judged on this plan, not on a freshly read second one
                return None
            if plan.source and _sig(self.dir / plan.source) != plan.source_sig:
                continue  # the primary rewrote its file while we were reading it: replan
            write_atomic(self.dir / plan.dest, cc.render(plan.desired, self.style), plan.mode)
            if plan.remove:
                remove_atomic(self.dir / plan.remove)
            log.info("CNI config written", file=plan.dest, source=plan.source or "", converted=plan.remove or "")
            return plan.dest
        raise cc.ConfigFileError(f"{plan.source} kept changing while we were reading it")

    def uninstall(self) -> list[str]:
        """Remove our entry/file(s); returns the names touched. Never touches other files."""
        touched = []
        if not self.s.chained:
            name = self.s.cni_conf_name or STANDALONE_DEFAULT
            path = self.dir / name
            try:
                if cc.read_conf(path).get("type") == cc.PLUGIN_TYPE and remove_atomic(path):
                    touched.append(name)
            except cc.ConfigFileError:
                pass
            return touched
        if self.s.istio_owned_config:
            if remove_atomic(self.dir / self.s.istio_owned_config_filename):
                touched.append(self.s.istio_owned_config_filename)
        for name in cc.candidate_names(self.dir):
            path = self.dir / name
            try:
                conf = cc.read_conf(path)
            except cc.ConfigFileError:
                continue
            if cc.is_list(conf) and cc.our_entries(conf):
                rest = cc.remove(conf)
                if rest["plugins"]:
                    write_atomic(path, cc.render(rest, self.style), os.stat(path).st_mode & 0o7777)
                else:  # a list holding nothing but us was ours alone: an empty list is invalid
                    remove_atomic(path)
                touched.append(name)
        if touched:
            log.info("istio-cni entry removed from CNI config", files=touched)
        return touched
