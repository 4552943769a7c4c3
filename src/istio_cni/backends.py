"""Netfilter backend names: the one vocabulary, from the netfilter package to the chart.

* ``CHOICES``: what an operator chooses. The netconf key ``netfilter_backend`` (``config``),
  the installer's ``NETFILTER_BACKEND`` setting (``istio_cni_installer.settings``) and the
  chart's ``netfilterBackend`` (after ``CHART_ALIASES``) accept these.
* ``NAMES``: what ``netfilter.make_backend`` / ``netfilter.usable`` and the
  ``ISTIO_CNI_NETFILTER_BACKEND`` override accept: the choices plus ``restore`` with a forced
  x_tables flavour (``istio-iptables --force-iptables-binary``, ``auto``'s own pick).
* ``CHART_ALIASES``: the only user-facing alias. The chart says ``legacy`` where the plugin
  says ``iptc``; Helm cannot import this module, so ``charts/istio-cni/templates/configmap.yaml``
  applies the mapping and ``tests/chart/test_chart_settings.py`` holds chart and module
  together (the schema's enum is ``CHART_CHOICES``; ``dry-run`` is not offered by the chart).

A new backend is one name here plus its class in ``netfilter`` (``make_backend`` and the
``usable`` check); the chart enum follows when the chart should offer it.

Imports nothing: ``config`` reads it on every ADD.
"""

from __future__ import annotations

AUTO = "auto"
CHOICES = ("auto", "iptc", "nft", "restore", "dry-run")
RESTORE_VARIANTS = ("restore-legacy", "restore-nft")
NAMES = ("auto", "iptc", "nft", "restore") + RESTORE_VARIANTS + ("dry-run",)
CHART_ALIASES = {"legacy": "iptc"}
CHART_CHOICES = ("auto", "legacy", "nft", "restore")


def from_chart(value: str) -> str:
    """The backend name a chart value ``netfilterBackend`` stands for."""
    return CHART_ALIASES.get(value, value)
