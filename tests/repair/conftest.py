"""Repair tests reuse the agent tests' mini pod API and pod builders (tests/agent)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

AGENT_TESTS = Path(__file__).resolve().parent.parent / "agent"
if str(AGENT_TESTS) not in sys.path:
    sys.path.insert(0, str(AGENT_TESTS))

from miniapi import MiniAPI  # noqa: E402
from repairsupport import sandbox  # noqa: E402,F401  (fixture)


@pytest.fixture
def mini_api():
    with MiniAPI() as api:
        yield api


@pytest.fixture
def api_client(mini_api, tmp_path):
    from istio_cni_installer.agent import make_api_client

    client = make_api_client(mini_api.kubeconfig(tmp_path / "kubeconfig"))
    yield client
    client.close()
