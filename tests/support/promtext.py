"""Read one sample out of a Prometheus text exposition, the way a scraper does.

Parsed with prometheus_client's own parser, so label order and number spelling (``1`` vs
``1.0``, ``le="10"`` vs ``le="10.0"``) do not matter; bucket bounds compare as numbers.
"""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families


def _norm(labels: dict) -> dict:
    return {k: (float(v) if k == "le" else v) for k, v in labels.items()}


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of sample ``name`` with exactly ``labels``, or None if there is none."""
    want = _norm(labels)
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and _norm(s.labels) == want:
                return s.value
    return None
