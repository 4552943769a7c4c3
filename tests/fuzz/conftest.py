"""The fuzz tier: differential and whole-process fuzzing under hypothesis, bounded in time.

One seed per run, shared by every fuzz test: taken from ``ISTIO_CNI_FUZZ_SEED`` when set
(to replay a run), otherwise drawn at random. It is printed in the report header (when
pytest starts in this directory) and in the terminal summary (always), so any failure can
be rerun with ``ISTIO_CNI_FUZZ_SEED=<seed> .venv/bin/python -m pytest tests/fuzz``.

Tests take their settings from the ``fuzz`` profile (``settings(FUZZ, max_examples=N)``,
``FUZZ = settings.get_profile("fuzz")``): no deadline (a loaded CI machine is not a bug),
no example database (the seed alone decides the run), and a default example bound. The
whole tier is budgeted at about 90 s on this 2-core machine; each test sets its own
``max_examples`` within that budget.
"""

from __future__ import annotations

import os
import random

import pytest
from hypothesis import HealthCheck, seed, settings

SEED_ENV = "ISTIO_CNI_FUZZ_SEED"
SEED = int(os.environ.get(SEED_ENV) or random.SystemRandom().randrange(2**32))

settings.register_profile(
    "fuzz",
    max_examples=100,
    deadline=None,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                           HealthCheck.filter_too_much],
)

_FUZZ_DIR = os.path.dirname(os.path.abspath(__file__))


def _line() -> str:
    return f"fuzz seed: {SEED} (replay with {SEED_ENV}={SEED})"


def pytest_report_header(config):
    return _line()


def pytest_collection_modifyitems(config, items):
    for item in items:
        fn = getattr(item, "obj", None)
        if str(item.fspath).startswith(_FUZZ_DIR + os.sep) and hasattr(fn, "hypothesis"):
            seed(SEED)(fn)  # the run's seed for every hypothesis test of this tier


def pytest_terminal_summary(terminalreporter):
    terminalreporter.write_line(_line())


@pytest.fixture(scope="session")
def fuzz_seed() -> int:
    return SEED
