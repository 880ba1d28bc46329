"""The validity suite: does an extractor's FID order image sets the way a person would?

The committed leaderboard sample sets (``leaderboard/samples/<name>``) are ranked by eye below, best first,
written down from ``leaderboard/thumbs/*.png`` and 24 further samples of several sets before any distance was
measured. Sets in one tier are ones a person cannot rank against each other.
"""

from __future__ import annotations

#: Tier 0 is the real held-out row. Why each set sits where it does (looked at 2026-12-06, before measuring):
#: - pggan, lsgan: sharp lung fields, a mediastinum and clavicles in nearly every sample; LSGAN has more
#:   artefacts (dark borders, a few washed-out samples), PGGAN more repetition: no clear winner between them.
#: - vae, fs-gmvae, gmvae: every sample a recognisable but blurred "average chest" (lungs, mediastinum,
#:   shoulders), low contrast, no fine structure; fs-gmvae slightly noisier, gmvae slightly blurrier: one tier.
#: - ddpm (32 px): about half the samples show lungs and a mediastinum, the rest are mostly noise.
#: - diffusevae (32 px): faint lung-like dark patches in some samples, blotchy texture, hardly any anatomy.
#: - ldm: high-contrast dark blobs on white, no anatomy at all (the blob set).
GENERATOR_EYE_TIERS: dict[str, int] = {
    "pggan": 1, "lsgan": 1,
    "vae": 2, "fs-gmvae": 2, "gmvae": 2,
    "ddpm": 3,
    "diffusevae": 4,
    "ldm": 5,
}
#: leaderboard sample sets that show no chest: every chest-showing set must rank ahead of them
BLOB_GENERATORS = ("ldm",)
