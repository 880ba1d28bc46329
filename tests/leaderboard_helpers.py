"""Hand-built leaderboard entries for rendering/ranking tests (no evaluation needed).

The numbers are arbitrary; what the tests assert are the rules (direction, grouping, stability).
"""

from __future__ import annotations

import hashlib

from cxrbench.data.imageset import set_sha256
from cxrbench.publish.card import card_from_dict
from cxrbench.publish.entry import make_entry
from cxrbench.results import SCHEMA


def fake_result(metrics: dict[str, tuple[float, bool]], *, protocol=("default", 1), comparable=True, n=8, seed=0):
    """``metrics``: key -> (value, higher_is_better); CIs are value -/+ 5%."""
    hashes = [hashlib.sha256(f"{seed}-{i}".encode()).hexdigest() for i in range(n)]
    files = [(f"img_{i:03d}.png", h) for i, h in enumerate(hashes)]
    result = {
        "schema": SCHEMA,
        "cxrbench_version": "0.1.0",
        "protocol": {"name": protocol[0], "version": protocol[1]},
        "samples": {"path": "/samples", "n": n, "sha256": set_sha256(hashes)},
        "reference": {"name": "ref", "split": "test", "n": 16, "sha256": "0" * 64},
        "extractors": {"random-conv": {"weights": "random:0" if not comparable else "f" * 64, "version": "1"}},
        "metrics": {
            k: {
                "value": v,
                "ci": [v * 0.95, v * 1.05],
                "higher_is_better": hib,
                "n_gen": n,
                "n_ref": 16,
                "real_vs_real": None,
            }
            for k, (v, hib) in metrics.items()
        },
        "config": {},
        "comparable": comparable,
    }
    return result, files


def fake_entry(name: str, metrics, *, card_extra: dict | None = None, location: str | None = None, **kw) -> dict:
    card = card_from_dict(
        {
            "name": name,
            "authors": ["A. Author"],
            "url": "https://example.org/model",
            "training_data": "synthetic",
            "resolution": 32,
            "conditioning": "unconditional",
            "license": "MIT",
            **(card_extra or {}),
        }
    )
    result, files = fake_result(metrics, seed=sum(map(ord, name)) % 1000, **kw)
    return make_entry(result, card, files, {"random-conv": result["extractors"]["random-conv"]["weights"]},
                      location=location)
