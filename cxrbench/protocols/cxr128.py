"""Protocol ``cxr128``: comparable numbers offline, with no data and no download (the default protocol).

Everything that makes two numbers comparable is fixed here and shipped inside the package:

- the feature network ``cxr128`` (128-d embedding and 8 layout logits, whitened by the training split's
  covariance) and its label head ``cxr128-classifier``, trained by cxrbench on public radiographs and pinned by sha256
  (``cxrbench.features.cxr128``), chosen among the candidates by how closely FID in its embedding orders the
  validity suite's sets as a person does (``cxrbench validate``; ``leaderboard/validity/README.md``).
  Version 2 whitens the embedding: in version 1's raw embedding the blob samples of the retired board ranked
  ahead of four chest-showing sets; whitened, they rank behind every one. Version 3's network adds a mirror and
  a seam (two images joined along a line) to its orientation pretext: 7 of the suite's 217 orders violated,
  not 13, and 2 of the eye panel's 77 agreed pairs, not 5. Version 4 appends a layout network's 8 logits
  (upright, turned, flipped, mirrored, two chests joined), whitened on their own and weighted by 2: a mirrored or
  spliced chest no longer scores beside real (1.6x and 1.9x the floor in version 3);
- the preprocessing: any input is centre-cropped and resized to 128 px (bilinear, antialiased), as the
  extractor spec in every result says;
- the reference: features of the 599 NIH ChestX-ray14 images (256 px originals) of the ``reference`` split
  (``cxr128_splits``: patient-disjoint from everything the network and the bundled generators train on),
  shipped as derived numbers with their labels and patient ids, never as images;
- the held-out split's features (309 images of other patients): the real row a perfect generator would
  score at the protocol's sample count (``cxr128:heldout``), and the label head's calibration set;
- the training split's features, so ``memorization_cxr128`` runs against what the bundled generators saw;
- the sample count: the first ``SAMPLE_COUNT`` samples in canonical (sha256) order, what the held-out split
  supplies; fewer makes the result not comparable;
- the metric list: every feature metric (FID, KID, PRDC, memorization, KS over features and over label
  probabilities, label distribution and adherence). FD-infinity is not in it: its 1/N extrapolation needs at
  least as many rows as dimensions in the smallest fitted subset (a fifth of N), 60 < 136 at N = 300.

Metrics that need the reference's images (MS-SSIM, pixel KS, RRS) do not belong to the protocol.
"""

from __future__ import annotations

from ..data.precomputed import PrecomputedSet
from ..features.cxr128 import shipped_path
from .embedded import EmbeddedProtocol, load_shipped_set

NAME = "cxr128"
VERSION = "4"
SAMPLE_COUNT = 300
EXTRACTORS = ("cxr128", "cxr128-classifier")
METRICS = ("fid", "kid", "prdc", "memorization", "ks_features", "ks_labels", "labels", "label_adherence")
#: sha256 of the shipped feature files; a file with other bytes is refused
REFERENCE_SHA256 = "ba07d109c57ebe67a8c767299281539c93abfd7aeebddb1e733264f25bdcbbd2"
TRAIN_SHA256 = "788836e14ae642f31d224af2c5f88ce675e0a64bb7db752fc62987d573d09e7b"
HELDOUT_SHA256 = "82f6ea1edd6f0d16de17173e0cb64ad67a531c58143fddee9941b3a2ee79d04e"
FEATURE_FILES = {"reference": ("cxr128-reference.npz", REFERENCE_SHA256),
                 "train": ("cxr128-train.npz", TRAIN_SHA256),
                 "heldout": ("cxr128-heldout.npz", HELDOUT_SHA256)}


def load_features(which: str) -> PrecomputedSet:
    """The shipped ``reference``, ``train`` or ``heldout`` set; a missing or altered file is refused, naming the
    fix."""
    fname, expected = FEATURE_FILES[which]
    return load_shipped_set(shipped_path(fname), expected, "cxr128", which, f"{NAME}/{VERSION}")


class CXR128Protocol(EmbeddedProtocol):
    """Registry entry ``PROTOCOLS["cxr128"]``: fixes extractors, metrics, sample count and the shipped sets."""

    name = NAME
    version = VERSION
    sample_count = SAMPLE_COUNT
    headline = "fid_cxr128"
    extractors = EXTRACTORS
    metrics = METRICS
    why_not = {"fd_inf": " (FD-infinity is not valid at its N: a fifth of 300 rows for 136-d features)"}
    features = staticmethod(load_features)
