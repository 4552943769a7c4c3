"""Fixtures for the agent and repair tests: the mini pod API and agents wired to it."""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from api_fixtures import api_client, mini_api  # noqa: E402,F401  (fixtures)
