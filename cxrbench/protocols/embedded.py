"""What the embedded protocols (``cxr128``, the retired ``cxr64``) share: a protocol that ships its network,
label head and reference / training / held-out features, and fixes everything else that makes numbers
comparable."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

import numpy as np
import pandas as pd

from ..data.io import check_pinned
from ..data.precomputed import PrecomputedSet
from ..engine.protocol import Protocol
from ..errors import UsageError

#: the real-image sets a leaderboard evaluates in place of a generator's samples (``NAME:heldout``: what a
#: perfect generator would score; ``NAME:train``: a perfect memorizer, which memorization must flag)
SHIPPED_SAMPLES = ("heldout", "train")


def load_shipped_set(path: Path, expected: str, extractor: str, which: str, protocol_id: str) -> PrecomputedSet:
    """A protocol's shipped ``reference`` / ``train`` / ``heldout`` feature file (``extractor`` features, labels,
    patients, hashes), refused in one line when missing or not the pinned ``expected`` sha256."""
    digest = check_pinned(path, expected, f"{extractor} {which} features",
                          "reinstall cxrbench (pip install --force-reinstall cxrbench) or restore the file from the repository")
    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(str(z["meta"]))
        labels = pd.DataFrame({c: z[f"label:{c}"] for c in meta["label_columns"]})
        return PrecomputedSet(
            name=meta["name"], ids=[str(x) for x in z["ids"]], hashes=[str(x) for x in z["hashes"]],
            features={extractor: z["features"].astype(np.float32)}, specs={extractor: meta["spec"]},
            labels=labels, patient_ids=[str(x) for x in z["patient_ids"]],
            meta={"split": which, "sha256": digest, "source": meta["source"], "protocol": protocol_id},
        )


class EmbeddedProtocol(Protocol):
    """``extractors`` / ``metrics`` are fixed; ``features`` loads a shipped set (``reference``, ``train``,
    ``heldout``); ``why_not`` says why a metric that is not in the list is left out."""

    extractors: ClassVar[tuple[str, ...]] = ()
    metrics: ClassVar[tuple[str, ...]] = ()
    why_not: ClassVar[dict[str, str]] = {}
    features: ClassVar[Callable[[str], PrecomputedSet]]

    def prepare(self, config, reference, train_reference):
        """The config and the sets an evaluation under this protocol uses; a conflicting request is refused."""
        name = self.name
        if reference is not None:
            raise UsageError(
                f"--protocol {name} fixes its reference (held-out NIH features shipped with cxrbench); drop "
                "--reference, or drop --protocol to evaluate against your own reference (numbers then are not "
                f"comparable with {name} ones)")
        if train_reference is not None:
            raise UsageError(f"--protocol {name} fixes the training reference for memorization (the protocol's "
                             "NIH training split); drop --train-reference")
        if config.weights not in ("auto", "random"):
            raise UsageError(f"--protocol {name} uses its own shipped weights; drop --weights {config.weights}")
        asked = set(config.metrics or ()) - set(self.metrics)
        if asked:
            raise UsageError(f"--protocol {name} does not include {sorted(asked)}; its metrics: "
                             f"{', '.join(self.metrics)}" + "".join(self.why_not.get(m, "") for m in sorted(asked)))
        config = config.resolved(extractors=self.extractors, metrics=config.metrics or self.metrics)
        load = type(self).features
        return config, load("reference"), load("train")

    def shipped_samples(self, which: str) -> PrecomputedSet | None:
        """``NAME:heldout`` / ``NAME:train`` as a samples set (rows in sha256 order)."""
        return type(self).features(which).canonical() if which in SHIPPED_SAMPLES else None
