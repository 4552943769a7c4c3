"""Repair controller: finds pods on this node that started without redirect rules and
repairs them in place, labels them, or deletes them (see ``controller``)."""

from .controller import RepairController, cache_serves, pod_cache_for
from .detect import MODES, RepairSettings, validation_failure
from .netns import find_netns

__all__ = [
    "RepairController",
    "pod_cache_for",
    "cache_serves",
    "RepairSettings",
    "MODES",
    "validation_failure",
    "find_netns",
]
