"""Side tools: everything of ``istio_cni`` that is not the plugin's ADD path.

* ``iptables_cli`` (+ ``iptables_validation``): the ``istio-iptables`` command, upstream's
  flags and environment, over the same rule engine and backends as the plugin;
* ``validate``: ``istio-cni validate``, the probe the ``istio-validation`` init container runs;
* ``chain`` and ``netns``: a libcni-like chain runner and network-namespace helpers for
  ``make demo``, the tests and the benchmarks.

The plugin never imports this package, and the host bundle (``istio_cni_installer.bundle``)
leaves it out: kubelet only ever execs the plugin there. The wheel and the node image carry it.
"""
