"""Content-addressed feature cache, written atomically and verified on read.

An entry holds the features of one chunk of images for one extractor. Its key is the sha256 of the chunk's
image hashes (in canonical order) plus the extractor's full ``spec()`` (name@version, weights id, input size,
resize filter): change any of them and the key changes. Entries carry a checksum of their payload; a
truncated or corrupted entry is ignored (and recomputed), never read as features. Two processes writing the
same entry write identical bytes through ``os.replace``, so sharing a cache between runs is safe.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path

import numpy as np

from ..data.index import default_cache_dir
from ..fileio import atomic_write_bytes


def chunk_key(hashes: list[str], spec: dict) -> str:
    blob = json.dumps({"images": hashes, "extractor": spec}, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()


class FeatureCache:
    def __init__(self, root: str | os.PathLike | None = None, *, enabled: bool = True):
        self.root = Path(root) if root is not None else default_cache_dir()
        self.enabled = enabled
        self.hits = 0
        self.misses = 0
        self.corrupt: list[str] = []

    def _path(self, key: str) -> Path:
        return self.root / "features" / key[:2] / f"{key}.npz"

    def get(self, key: str) -> np.ndarray | None:
        if not self.enabled:
            return None
        p = self._path(key)
        try:
            with np.load(p, allow_pickle=False) as z:
                feats, checksum = z["features"], str(z["checksum"])
        except FileNotFoundError:
            self.misses += 1
            return None
        except Exception:  # truncated / not an npz: treat as absent, recompute
            self.corrupt.append(str(p))
            self.misses += 1
            return None
        if hashlib.sha256(np.ascontiguousarray(feats).tobytes()).hexdigest() != checksum:
            self.corrupt.append(str(p))
            self.misses += 1
            return None
        self.hits += 1
        return feats

    def put(self, key: str, feats: np.ndarray) -> None:
        if not self.enabled:
            return
        feats = np.ascontiguousarray(feats, dtype=np.float32)
        buf = io.BytesIO()
        np.savez(buf, features=feats, checksum=np.array(hashlib.sha256(feats.tobytes()).hexdigest()))
        atomic_write_bytes(self._path(key), buf.getvalue())
