"""Installer test fixtures: ``plugin_bundle``/``host_layout`` live in tests/support/installer_fixtures.py,
registered for every suite by the root conftest's ``pytest_plugins``."""
