"""Fixtures for the agent and repair tests: the mini pod API and agents wired to it."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from miniapi import MiniAPI  # noqa: E402


@pytest.fixture
def mini_api():
    with MiniAPI() as api:
        yield api


@pytest.fixture
def api_client(mini_api, tmp_path):
    from istio_cni_installer.agent import make_api_client

    client = make_api_client(mini_api.kubeconfig(tmp_path / "agent-kubeconfig"))
    yield client
    client.close()
