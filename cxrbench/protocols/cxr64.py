"""Protocol ``cxr64``: comparable numbers offline, with no data and no download.

Everything that makes two numbers comparable is fixed here and shipped inside the package:

- the feature network ``cxr64`` (64-d embedding) and its label head ``cxr64-classifier``, trained by
  cxrbench on public radiographs and pinned by sha256 (``cxrbench.features.cxr64``);
- the preprocessing: any input is centre-cropped and resized to 64 px (bilinear, antialiased), as
  the extractor spec in every result says;
- the reference: features of 350 held-out NIH ChestX-ray14 thumbnails (patient-disjoint from everything
  the network and the bundled generators train on; ``cxr64_splits``), shipped as derived numbers with
  their labels and patient ids (for patient-wise real-vs-real floors), never as images;
- the training split's features, so ``memorization_cxr64`` runs against what the bundled generators saw;
- the sample count: the first ``SAMPLE_COUNT`` samples in canonical (sha256) order; fewer makes the result
  not comparable;
- the metric list: every feature metric (FID, KID, FD-infinity, PRDC, memorization, KS over features and
  over label probabilities, label distribution and adherence).

Metrics that need the reference's images (MS-SSIM, pixel KS, RRS) do not belong to the protocol.
"""

from __future__ import annotations

from ..data.precomputed import PrecomputedSet
from ..features.cxr64 import shipped_path
from .embedded import EmbeddedProtocol, load_shipped_set

NAME = "cxr64"
VERSION = "1"
SAMPLE_COUNT = 200
EXTRACTORS = ("cxr64", "cxr64-classifier")
METRICS = ("fid", "kid", "fd_inf", "prdc", "memorization", "ks_features", "ks_labels", "labels", "label_adherence")
#: sha256 of the shipped feature files; a file with other bytes is refused
REFERENCE_SHA256 = "170ed8cb592b58a70837a5e26f87eef2c4e02abf6f3d02dd7224a548a9def0de"
TRAIN_SHA256 = "1a5e3082bb9ff67679c07571bd6b692c8c3a50368018e5405d88e5f77e3b1485"
HELDOUT_SHA256 = "6fab0b39e223653062777ddd7502f7640881d6bbe209cb150a058e498a83cb56"
FEATURE_FILES = {"reference": ("cxr64-reference.npz", REFERENCE_SHA256), "train": ("cxr64-train.npz", TRAIN_SHA256),
                 "heldout": ("cxr64-heldout.npz", HELDOUT_SHA256)}


def load_features(which: str) -> PrecomputedSet:
    """The shipped ``reference``, ``train`` or ``heldout`` set; a missing or altered file is refused, naming the
    fix."""
    fname, expected = FEATURE_FILES[which]
    return load_shipped_set(shipped_path(fname), expected, "cxr64", which, f"{NAME}/{VERSION}")


class CXR64Protocol(EmbeddedProtocol):
    """Registry entry ``PROTOCOLS["cxr64"]``: fixes extractors, metrics, sample count and the shipped sets."""

    name = NAME
    version = VERSION
    sample_count = SAMPLE_COUNT
    headline = "fid_cxr64"
    extractors = EXTRACTORS
    metrics = METRICS
    features = staticmethod(load_features)
