"""Fixtures of the chart tests (tests/chart, and the chart tests against a real API server in
tests/e2e): the real helm binary (built by tools/go-tools.sh) and renders. Registered by the
root conftest."""

from __future__ import annotations

from pathlib import Path

import pytest
from peers.tools import tool_path

from support.chartlib import Helm, Manifests


@pytest.fixture(scope="session")
def helm(tmp_path_factory) -> Helm:
    return Helm(tool_path("helm"), tmp_path_factory.mktemp("helm-home"))


@pytest.fixture(scope="session")
def values_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("values")


@pytest.fixture
def render(helm, values_dir):
    """``render(values_dict, *extra_helm_args, kube_version=...) -> Manifests``."""
    def _render(values: dict | None = None, *extra: str, **kw) -> Manifests:
        return helm.template(values, *extra, tmp=values_dir, **kw)
    return _render


@pytest.fixture
def render_error(helm, values_dir):
    def _render_error(values: dict | None = None, *extra: str) -> str:
        return helm.template_error(values, *extra, tmp=values_dir)
    return _render_error


@pytest.fixture(scope="session")
def default_manifests(helm, values_dir) -> Manifests:
    return helm.template(None, tmp=values_dir)
