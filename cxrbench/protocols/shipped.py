"""The real-image rows the embedded protocols ship as features (``cxr128:heldout``, ``cxr64:train``, ...).

A leaderboard evaluates them in place of a generator's samples to give the board its scale; this is the one
place that knows every protocol's names, so the harness and the submission code need not.
"""

from __future__ import annotations

from . import cxr64, cxr128

#: shipped name -> (protocol module, split)
SHIPPED_SAMPLES = {**{k: (cxr64, v) for k, v in cxr64.SHIPPED_SAMPLES.items()},
                   **{k: (cxr128, v) for k, v in cxr128.SHIPPED_SAMPLES.items()}}


def shipped_samples(spec):
    """A shipped real-image row as a ``PrecomputedSet`` (rows in sha256 order); None for anything else."""
    if isinstance(spec, str) and spec in SHIPPED_SAMPLES:
        module, split = SHIPPED_SAMPLES[spec]
        return module.load_features(split).canonical()
    return None
