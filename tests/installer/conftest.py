"""Installer test fixtures. ``plugin_bundle``/``host_layout`` live in istio_cni_installer.testing
so other suites can use them too; when the root conftest registers that module as a pytest
plugin, delete the import below (otherwise the session bundle is built twice)."""
