"""Repair tests reuse the agent tests' mini pod API and pod builders (tests/agent)."""

from __future__ import annotations

import sys
from pathlib import Path

AGENT_TESTS = Path(__file__).resolve().parent.parent / "agent"
if str(AGENT_TESTS) not in sys.path:
    sys.path.insert(0, str(AGENT_TESTS))

from api_fixtures import api_client, mini_api  # noqa: E402,F401  (fixtures)
from repairsupport import sandbox  # noqa: E402,F401  (fixture)
