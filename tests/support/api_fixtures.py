"""The mini pod API and a client for it: fixtures for the agent and repair tests of every tier
(registered by the root conftest)."""

from __future__ import annotations

import pytest

from support.miniapi import MiniAPI


@pytest.fixture
def mini_api():
    with MiniAPI() as api:
        yield api


@pytest.fixture
def api_client(mini_api, tmp_path):
    from istio_cni_installer.kube.client import KubeClient

    client = KubeClient.from_kubeconfig(mini_api.kubeconfig(tmp_path / "agent-kubeconfig"))
    yield client
    client.close()
