"""The validity suite: does an extractor's Frechet distance order image sets the way a person would?

A feature space is fit to rank generators only when its distances put real images first, degraded but
anatomical images (a radiologist still reads them) next, and images whose anatomy is violated (nobody would
take them for a radiograph) last; when a generator's later training checkpoints come closer than its earlier
ones; and when generator sample sets come out in the order a person puts them by eye. ``run_suite`` builds
the sets deterministically from real images the extractor did not train on (by default the ``cxr128``
held-out split of ``nih_extra_256px``, scored against its reference split, at 128 px), measures FID of
each against the reference through the extractor, and checks every expected pairwise order:

- (a) ``real``: held-out real images (its FID is the real-vs-real floor at this N);
- (b) ``degraded``: ``data.corruptions`` of class degraded at mild and moderate strength;
- (c) ``violated``: ``data.corruptions`` of class violated;
- (d) ``population``: pediatric chest X-rays (Kermany et al., its ``ValData`` split), real but another
  population;
- (e) ``generator``: the committed sample sets of the ``cxr128`` board (``leaderboard/samples/cxr128``) and
  of the retired ``cxr64`` board (kept as evidence in ``leaderboard/validity/sets/cxr64-board``), with the
  joint eye tiers below, and ``progress``: samples of bundled generators at successive training checkpoints
  (``leaderboard/progress``, and the ``cxr128`` board's kept checkpoints, ``leaderboard/samples/cxr128/curves``,
  each ladder ending at the board's own set).

Expected orders (lower FID first): real < every degraded set; mild < moderate within a family; every
moderate degraded set < every violated set; real < pediatric < every violated set; real < every generator
set; generator sets in the eye panel's consensus order (``eye_consensus``); every chest-showing generator set < the
blob sets (the ``blobs`` corruption and the blob generators); later checkpoints < earlier ones, except
consecutive ones a person cannot tell apart (``PROGRESS_EYE_TIES``). The moderate
strengths are the ones compared across classes because there the verdict of a reader is unambiguous
(clearly degraded, still read without effort); mild ones are only required to lie between real and moderate.

The committed sample sets are ranked by eye by four raters (``GENERATOR_SETS``: one who wrote tiers as the sets
arrived, three who rated blinded grids without names or numbers). A pair of sets is expected in an order only
where the raters agree on it: a majority puts one ahead and none puts it behind. Human agreement is itself
measured (``eye_panel``: Kendall's tau-b between every two raters), the ceiling for a metric's agreement with them.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import re
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image

from ..config import EvalConfig, resolve_device
from ..data import corruptions
from ..data.imageset import array_source
from ..data.io import load_image
from ..errors import DataError, UsageError
from ..features.cache import FeatureCache
from ..fileio import atomic_write_bytes
from ..metrics.fid import TwoSampleFD
from ..metrics.functional import fid
from ..registry import EXTRACTORS
from ..seeding import numpy_rng
from .extraction import build_extractors, extract_features

#: The generator sample sets (folders relative to the repository root, ``--root``) and their eye tiers from
#: each rater of ``EYE_RATERS`` (1 = best; sets one rater puts in one tier are ones that rater cannot order).
#: Two boards: the retired ``cxr64`` board's sets (``-15min``: 15 CPU minutes on 449 images; kept in
#: ``leaderboard/validity/sets/cxr64-board``, see its README) and the ``cxr128`` board's (``-60min``: 60 CPU
#: minutes on 686 images). The raters (``leaderboard/validity/eye-panel/`` holds each one's tiers and notes):
#: - ``author``: the tiers written into this suite as the sets arrived: the ``-15min`` sets before any distance
#:   was measured on them (2026-12-06); among the ``-60min`` sets diffusevae-60min, ldm-60min and fs-gmvae-60min
#:   before any of their distances, the others after their board values had printed.
#: - ``blind-1`` to ``blind-3`` (2026-12-07): three independent raters, each shown only the grids of
#:   ``cxrbench validate --panel-grids DIR`` (seed 0: 36 of each set's 200 suite images at 128 px under a shuffled
#:   letter, beside 36 held-out real images) and asked how closely each set, taken as a whole, resembles the real
#:   set as stand-ins for real chest radiographs; they saw no set name and no number.
#: The raters agree with each other at Kendall tau-b +0.49 to +0.80. Where they part is the trade a distribution
#: metric makes too: the PGGAN and LSGAN-15 sets (varied chests, cartoonish lung blobs, black edge artefacts)
#: against the blurred, collapsed VAE family. ``author`` and blind-2 put the first ahead, blind-3 behind, and
#: blind-1 level with the family's better sets. So a pair of sets is expected in an order only where the panel
#: agrees on it (``eye_consensus``).
EYE_RATERS = ("author", "blind-1", "blind-2", "blind-3")
_BOARD = "leaderboard/samples/cxr128/"  # the cxr128 board's sample sets
_RETIRED = "leaderboard/validity/sets/cxr64-board/"  # the retired cxr64 board's, kept as validity evidence
GENERATOR_SETS: dict[str, tuple[str, tuple[int, ...]]] = {  # name: (folder, tiers in EYE_RATERS order)
    "lsgan-60min": (_BOARD + "lsgan", (1, 2, 1, 1)),
    "ddpm-60min": (_BOARD + "ddpm", (2, 1, 2, 2)),
    "diffusevae-60min": (_BOARD + "diffusevae", (2, 3, 2, 2)),
    "pggan-60min": (_BOARD + "pggan", (2, 4, 4, 5)),
    "lsgan-15min": (_RETIRED + "lsgan", (2, 5, 3, 6)),
    "pggan-15min": (_RETIRED + "pggan", (2, 5, 4, 5)),
    "ldm-60min": (_BOARD + "ldm", (4, 4, 3, 4)),
    "vae-60min": (_BOARD + "vae", (3, 5, 5, 3)),
    "gmvae-60min": (_BOARD + "gmvae", (3, 4, 5, 3)),
    "fs-gmvae-60min": (_BOARD + "fs-gmvae", (3, 4, 5, 3)),
    "vae-15min": (_RETIRED + "vae", (3, 6, 5, 4)),
    "gmvae-15min": (_RETIRED + "gmvae", (3, 6, 5, 3)),
    "fs-gmvae-15min": (_RETIRED + "fs-gmvae", (3, 7, 6, 4)),
    "ddpm-15min": (_RETIRED + "ddpm", (4, 7, 7, 7)),
    "diffusevae-15min": (_RETIRED + "diffusevae", (5, 8, 8, 8)),
    "ldm-15min": (_RETIRED + "ldm", (6, 9, 9, 9)),
}
#: each rater's eye tiers by set name (results record them)
GENERATOR_EYE_TIERS: dict[str, dict[str, int]] = {
    rater: {name: tiers[i] for name, (_, tiers) in GENERATOR_SETS.items()} for i, rater in enumerate(EYE_RATERS)}
#: sample sets that show no chest: every chest-showing set must rank ahead of them
BLOB_GENERATORS = ("ldm-15min",)
#: the cxr128 board's kept checkpoints (``reproduce`` writes ``curves/<generator>/cpu-<M>min``; relative to
#: the repository root), each ladder ending at the board's own set: training-progress ladders
BOARD_CURVES = Path(_BOARD) / "curves"
#: consecutive checkpoints a person cannot tell apart (same eye tier: no order expected between them):
#: LSGAN's 15 and 30 minutes (chests with corner artefacts, about equal; judged before any cxr128 number),
#: the VAE's 30 and 60 minutes (the same blurred average chest per sample, the 60-minute set less varied;
#: judged after its curve had printed), and GMVAE's and FS-GMVAE's three kept sets (15, 30, 60 minutes of the
#: whole recipe: the same blurred average chests throughout; judged before their curves printed), and
#: DiffuseVAE's base-stage checkpoints (9 and 24 minutes of that stage: blotchy noise, then flat grey noise, no
#: chest in either; judged before any of its numbers), LDM's 5 and 15 minutes (blobs, no chest in either) and
#: its 30 and 60 (about half the samples a chest in both; both judged before any of its numbers)
PROGRESS_EYE_TIES: dict[str, tuple[tuple[str, str], ...]] = {
    "diffusevae-board": (("cpu-9min", "cpu-24min"),),
    "ldm-board": (("cpu-5min", "cpu-15min"), ("cpu-30min", "final")),
    "lsgan-board": (("cpu-15min", "cpu-30min"),),
    "gmvae-board": (("cpu-9min", "cpu-24min"), ("cpu-24min", "final")),
    "fs-gmvae-board": (("cpu-9min", "cpu-24min"), ("cpu-24min", "final")),
    "vae-board": (("cpu-30min", "final"),),
}

#: corruption families (``data.corruptions`` names) an extractor's training saw, for extractors that do not
#: declare them as ``training_corruptions``: the cxr64 network's quality head learned blur, noise, contrast
#: and JPEG-like quantisation (``baselines/cxr64net.py``)
TRAINING_CORRUPTIONS = {"cxr64": ("blur", "noise", "contrast", "jpeg"), "cxr64-classifier": ("blur", "noise", "contrast", "jpeg")}

#: where the sample sets' folders are resolved (the repository root) and the progress ladders
ROOT = Path(".")
PROGRESS_DIR = Path("leaderboard/progress")
KERMANY = "kermany_pediatric_covid_skytells"
#: every set is compared at this many images (the leaderboard's sample count), so FID's small-sample bias is
#: the same for all of them
DEFAULT_N = 200
#: bootstrap replicates of each violation's sampling noise
NOISE_REPS = 100
CLASSES = ("real", "degraded", "violated", "population", "generator", "progress")
CLASS_LEVEL = {"real": 0, "degraded": 1, "violated": 2}


@dataclasses.dataclass(frozen=True)
class ProtocolData:
    """Where a protocol's real images come from: the folder, its split table and the image size (the
    protocols' own instances are in ``protocols.validity_sets``)."""

    name: str
    folder: str
    size: int
    table: Callable[[Path], pd.DataFrame]  # labels.csv of the folder with a ``_split`` column

    def splits(self, data_root: Path) -> tuple[pd.DataFrame, Path]:
        root = Path(data_root) / self.folder
        if not (root / "labels.csv").is_file():
            raise DataError(f"{root}/labels.csv not found: the {self.name} validity sets are built from the "
                            f"{self.folder} folder; pass --data DIR holding it (the shared data folder)")
        return self.table(Path(data_root)), root


@dataclasses.dataclass
class ValiditySet:
    name: str
    cls: str  # one of CLASSES
    group: str  # corruption family, generator or ladder name
    strength: str | None = None  # mild / moderate for corruptions
    tier: float | None = None  # mean eye tier (generator sets) or checkpoint index (progress ladders, 1 = earliest)
    tiers: tuple[int, ...] | None = None  # generator sets: each rater's eye tier (EYE_RATERS); default (tier,)
    source: str = ""
    n: int = 0


# --- image sets ------------------------------------------------------------------------------------------

def load_square(paths, size: int) -> torch.Tensor:
    """Images as (N, 1, size, size): centre-cropped to a square, resized bilinearly with antialiasing."""
    out = []
    for p in paths:
        x = torch.from_numpy(load_image(p))[None, None]
        h, w = x.shape[-2:]
        s = min(h, w)
        x = x[..., (h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
        if s != size:
            x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        out.append(x.clamp(0, 1))
    return torch.cat(out).float()


def _pick(items: list, n: int, seed: int) -> list:
    """A seeded subset of ``n`` items (all of them when there are fewer), in a fixed order."""
    if len(items) <= n:
        return list(items)
    idx = np.sort(numpy_rng(seed).choice(len(items), n, replace=False))
    return [items[i] for i in idx]


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg"))


def progress_ladders(progress_dir: Path) -> dict[str, list[Path]]:
    """``{generator: [checkpoint folders, earliest first]}`` from ``progress_dir/<generator>/ckpt<k>-*``."""
    out = {}
    if not Path(progress_dir).is_dir():
        return out
    for gen in sorted(p for p in Path(progress_dir).iterdir() if p.is_dir()):
        steps = [(int(m.group(1)), p) for p in gen.iterdir() if p.is_dir() and (m := re.match(r"ckpt(\d+)", p.name))]
        if len(steps) >= 2:
            out[gen.name] = [p for _, p in sorted(steps)]
    return out


def board_ladders(root: Path) -> dict[str, list[Path]]:
    """``{<generator>-board: [checkpoint folders, earliest first, then the board's own set]}`` from the kept
    checkpoints' samples ``root/leaderboard/samples/cxr128/curves/<generator>/cpu-<M>min``."""
    out = {}
    curves = Path(root) / BOARD_CURVES
    if not curves.is_dir():
        return out
    for gen in sorted(p for p in curves.iterdir() if p.is_dir()):
        steps = [(float(m.group(1)), p) for p in gen.iterdir()
                 if p.is_dir() and (m := re.fullmatch(r"cpu-([0-9.]+)min", p.name))]
        # a staged recipe keeps its checkpoints under the stage's run (``diffusevae-base``): the board's set is
        # the recipe's (``diffusevae``), the longest prefix that names one
        parts = gen.name.split("-")
        finals = [curves.parent / "-".join(parts[:k]) for k in range(len(parts), 0, -1)]
        final = next((f for f in finals if f.is_dir()), None)
        rungs = [p for _, p in sorted(steps)] + ([final] if final is not None else [])
        if len(rungs) >= 2:
            out[f"{final.name if final is not None else gen.name}-board"] = rungs
    return out


class SuiteData:
    """The validity sets of one protocol, built on demand: ``reference()`` and ``sets()``."""

    def __init__(self, data_root, *, protocol: ProtocolData, n: int = DEFAULT_N, seed: int = 0,
                 root=ROOT, progress_dir=PROGRESS_DIR, skip_missing: bool = False,
                 corruption_names=None):
        self.protocol = protocol
        self.data_root = Path(data_root)
        self.size, self.n, self.seed = self.protocol.size, int(n), int(seed)
        self.sets_root, self.progress_dir = Path(root), Path(progress_dir)
        self.skip_missing = skip_missing
        self.skipped: list[str] = []
        self.corruption_names = list(corruption_names or corruptions.CORRUPTIONS)
        table, self.root = self.protocol.splits(self.data_root)
        self.heldout_paths = [self.root / p for p in table.loc[table["_split"] == "heldout", "path"]]
        self.reference_paths = [self.root / p for p in table.loc[table["_split"] == "reference", "path"]]
        self._real = None
        # every optional source is checked before any image is read, so a missing folder fails at once
        self.kermany = self.data_root / KERMANY
        if not (self.kermany / "labels.csv").is_file():
            self._missing("pediatric (another population)", self.kermany, "pass --data DIR holding it")
            self.kermany = None
        self.generators = {}
        for name, (rel, tiers) in GENERATOR_SETS.items():
            folder = self.sets_root / rel
            files = _image_files(folder) if folder.is_dir() else []
            if files:
                self.generators[name] = (tiers, folder, files)
            else:
                self._missing(f"generator ({name})", folder, "run from the repository root or pass --root")
        self.ladders = {**progress_ladders(self.progress_dir), **board_ladders(self.sets_root)}
        if not self.ladders:
            self._missing("progress (training checkpoints)", self.progress_dir,
                          "run from the repository root or pass --progress-dir")

    def _missing(self, what: str, path: Path, fix: str) -> None:
        if not self.skip_missing:
            raise DataError(f"{path} not found: the validity suite's {what} set(s) are built from it; {fix}, "
                            "or pass --skip-missing to run without them")
        self.skipped.append(f"{what}: {path} not found")

    def reference(self) -> torch.Tensor:
        return load_square(self.reference_paths, self.size)

    def panel_files(self) -> tuple[list[Path], dict[str, list[Path]]]:
        """The files an eye panel is shown (``write_panel_grids``): the held-out real images and each generator
        set's, the same seeded subsets the suite measures."""
        return (_pick(self.heldout_paths, self.n, self.seed),
                {name: _pick(files, self.n, self.seed) for name, (_, _, files) in self.generators.items()})

    def real(self) -> torch.Tensor:
        if self._real is None:
            self._real = load_square(_pick(self.heldout_paths, self.n, self.seed), self.size)
        return self._real

    def sets(self):
        """Yields ``(ValiditySet, images)``, one set at a time (images are not all held at once)."""
        src = f"{self.protocol.folder} {self.protocol.name} held-out"
        real = self.real()
        yield ValiditySet("real", "real", "real", source=src, n=len(real)), real
        for k, (name, c) in enumerate((k, corruptions.CORRUPTIONS[k]) for k in self.corruption_names):
            for strength in c.strengths:
                x = corruptions.apply(name, real, strength, seed=self.seed * 1000 + k)
                yield ValiditySet(f"{name}:{strength}", c.kind, name, strength, source=src, n=len(x)), x
        if self.kermany is not None:
            t = pd.read_csv(self.kermany / "labels.csv")
            # ValData only: the cxr64 network trained on NonAugmentedTrain
            keep = (t["likely_population"].astype(str).str.startswith("pediatric") & t["near_duplicate_of"].isna()
                    & (t["split"] == "ValData"))
            x = load_square(_pick([self.kermany / p for p in t.loc[keep, "path"]], self.n, self.seed), self.size)
            yield ValiditySet("pediatric", "population", "kermany", source=KERMANY, n=len(x)), x
        for name, (tiers, folder, files) in self.generators.items():
            x = load_square(_pick(files, self.n, self.seed), self.size)
            yield (ValiditySet(f"gen:{name}", "generator", name, tier=float(np.mean(tiers)), tiers=tuple(tiers),
                               source=str(folder), n=len(x)), x)
        for gen, folders in self.ladders.items():
            tier, prev = 0, None
            for folder in folders:
                x = load_square(_pick(_image_files(folder), self.n, self.seed), self.size)
                rung = folder.name if re.match(r"ckpt\d|cpu-", folder.name) else "final"  # a board ladder's end
                tier += (prev, rung) not in PROGRESS_EYE_TIES.get(gen, ())  # tied rungs share an eye tier
                prev = rung
                yield ValiditySet(f"progress:{gen}:{rung}", "progress", gen, tier=tier, source=str(folder), n=len(x)), x


# --- expected order, checks, agreement -------------------------------------------------------------------

def _rater_names(raters, k: int) -> list[str]:
    """``raters`` when there is one per tier, else ``rater-1`` ... (a panel other than the shipped one)."""
    return list(raters) if len(raters) == k else [f"rater-{i + 1}" for i in range(k)]


def _tiers(s: ValiditySet) -> tuple[int, ...]:
    return tuple(s.tiers) if s.tiers is not None else (s.tier,)


def eye_consensus(tiers: dict[str, tuple]) -> dict:
    """The orders a panel of raters agrees on, from ``{set: (tier of rater 1, tier of rater 2, ...)}`` (lower =
    better): ``pairs``, ``(a, b)`` where more than half the raters put ``a`` strictly ahead of ``b`` and none puts
    it behind; ``contested``, the pairs some raters order one way and others the other way (no order is
    expected there: people disagree, so a metric cannot be faulted either way). One rater: their own tiers."""
    names = list(tiers)
    if len({len(t) for t in tiers.values()}) > 1:
        raise ValueError("eye_consensus: every set needs one tier from each rater")
    pairs, contested = [], []
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            ahead = sum(x < y for x, y in zip(tiers[a], tiers[b]))
            behind = sum(x > y for x, y in zip(tiers[a], tiers[b]))
            if ahead and behind:
                contested.append((a, b))
            elif 2 * ahead > len(tiers[a]):
                pairs.append((a, b))
            elif 2 * behind > len(tiers[a]):
                pairs.append((b, a))
    return {"pairs": pairs, "contested": contested}


def eye_panel(raters=EYE_RATERS, sets=GENERATOR_SETS) -> dict:
    """How well the raters agree with each other: Kendall's tau-b between every two raters' tiers over the
    sets, and the consensus's size. A metric that agrees with the raters as well as they agree with each other
    is as good as a person; the inter-rater figures are that ceiling."""
    tiers = {name: t for name, (_, t) in sets.items()}
    consensus = eye_consensus(tiers)
    inter = {f"{raters[i]} vs {raters[j]}": tau_b([t[i] for t in tiers.values()], [t[j] for t in tiers.values()])
             for i in range(len(raters)) for j in range(i + 1, len(raters))}
    return {"raters": list(raters), "inter_rater_tau_b": inter, "consensus_pairs": len(consensus["pairs"]),
            "contested_pairs": len(consensus["contested"])}


def leave_one_out(tiers: dict[str, tuple], values: dict[str, float] | None = None, raters=EYE_RATERS) -> dict:
    """The eye rule's human floor: for each rater, the consensus of the others (``eye_consensus``) and how many of
    its pairs that rater reverses or ties; with ``values`` (lower = better, keyed like ``tiers``), how many a metric
    gets wrong (a tie counts as wrong, as in the checks). A metric that gets no more wrong than a held-out person
    disagrees with the panel no more than its own members do."""
    k = len(next(iter(tiers.values())))
    if k < 2:
        return {}
    names = _rater_names(raters, k)
    out = {}
    for i, rater in enumerate(names):
        pairs = eye_consensus({n: t[:i] + t[i + 1:] for n, t in tiers.items()})["pairs"]
        row = {"pairs": len(pairs), "rater_reversed": sum(tiers[a][i] > tiers[b][i] for a, b in pairs),
               "rater_tied": sum(tiers[a][i] == tiers[b][i] for a, b in pairs)}
        if values is not None:
            row["metric_wrong"] = sum(not _below(values[a], values[b]) for a, b in pairs)
        out[rater] = row
    return out


def expected_pairs(sets: list[ValiditySet]) -> list[tuple[str, str, str]]:
    """Every ``(better, worse, rule)`` a person would assert of these sets (``better`` should get the lower
    distance). A pair named by several rules is listed once, under the first."""
    by = {c: [s for s in sets if s.cls == c] for c in CLASSES}
    real = by["real"]
    deg, vio = by["degraded"], by["violated"]
    moderate = [s for s in deg if s.strength == "moderate"]
    gens = by["generator"]
    blob_tier = min((s.tier for s in gens if s.group in BLOB_GENERATORS), default=None)
    blob_sets = [s for s in vio if s.group == "blobs"] + [s for s in gens if s.group in BLOB_GENERATORS]
    chest_gens = [s for s in gens if s.group not in BLOB_GENERATORS and (blob_tier is None or s.tier < blob_tier)]
    pairs: list[tuple[str, str, str]] = []
    pairs += [(r.name, d.name, "real < degraded") for r in real for d in deg]
    for d in deg:
        pairs += [(d.name, e.name, "mild < moderate") for e in deg
                  if e.group == d.group and d.strength == "mild" and e.strength == "moderate"]
    pairs += [(r.name, v.name, "real < violated") for r in real for v in vio]
    pairs += [(d.name, v.name, "degraded (moderate) < violated") for d in moderate for v in vio]
    for p in by["population"]:
        pairs += [(r.name, p.name, "real < other population") for r in real]
        pairs += [(p.name, v.name, "other population < violated") for v in vio]
    pairs += [(r.name, g.name, "real < generator") for r in real for g in gens]
    consensus = eye_consensus({s.name: _tiers(s) for s in gens})
    pairs += [(a, b, "eye (panel consensus)") for a, b in consensus["pairs"]]
    pairs += [(g.name, b.name, "chest-showing < blobs") for g in chest_gens for b in blob_sets]
    ladders: dict[str, list[ValiditySet]] = {}
    for s in by["progress"]:
        ladders.setdefault(s.group, []).append(s)
    for steps in ladders.values():
        pairs += [(b.name, a.name, "progress monotone") for a in steps for b in steps if b.tier > a.tier]
    seen, out = set(), []
    for a, b, rule in pairs:
        if (a, b) not in seen:
            seen.add((a, b))
            out.append((a, b, rule))
    return out


def _below(a: float, b: float) -> bool:
    """``a < b`` beyond float round-off: sets with identical features (a flip seen by per-image pixel
    statistics) differ in FID only in the last bits, and such a tie must not count as an agreement."""
    return b - a > 1e-9 * max(abs(a), abs(b), 1e-300)


def order_checks(values: dict[str, float], pairs) -> list[dict]:
    """Each expected pair with its two values and whether the measured order agrees (ties disagree)."""
    return [{"better": a, "worse": b, "rule": rule, "value_better": values[a], "value_worse": values[b],
             "ok": _below(values[a], values[b])}
            for a, b, rule in pairs if a in values and b in values]


def pairwise_tau(checks: list[dict]) -> float | None:
    """Kendall's tau over the expected pairs of a partial order: (agreeing - disagreeing) / pairs. 1 when
    every expected order holds, -1 when every one is inverted."""
    if not checks:
        return None
    ok = sum(c["ok"] for c in checks)
    return (ok - (len(checks) - ok)) / len(checks)


def tau_b(expected: list[float], measured: list[float]) -> float | None:
    """Kendall's tau-b between an expected rank (ties allowed: tiers) and measured values."""
    from scipy.stats import kendalltau

    if len(expected) < 2 or len(set(expected)) < 2:
        return None
    t = kendalltau(expected, measured).statistic
    return None if not np.isfinite(t) else float(t)


def effective_dimensionality(features) -> dict:
    """Variance shares of the top 1 / 3 / 10 principal components and the participation ratio
    ``(sum l)^2 / sum l^2`` of the covariance eigenvalues ``l`` (1 when one direction holds all variance,
    D when variance is spread evenly over D)."""
    x = np.asarray(features, dtype=np.float64)
    ev = np.clip(np.linalg.eigvalsh(np.cov(x, rowvar=False).reshape(x.shape[1], x.shape[1])), 0, None)[::-1]
    total = ev.sum()
    if total <= 0:
        return {"dims": int(x.shape[1]), "top1": None, "top3": None, "top10": None, "participation_ratio": 0.0}
    share = np.cumsum(ev) / total
    return {"dims": int(x.shape[1]),
            "top1": float(share[0]), "top3": float(share[min(2, len(share) - 1)]),
            "top10": float(share[min(9, len(share) - 1)]),
            "participation_ratio": float(total**2 / (ev**2).sum())}


def _rater_taus(gens: list[ValiditySet], values: dict[str, float], raters) -> dict:
    """Kendall's tau-b of the measured values against each rater's tiers over the generator sets (as the
    inter-rater figures of ``eye_panel`` are, so the two compare)."""
    rated = [s for s in gens if s.cls == "generator"]
    if not rated:
        return {}
    names = _rater_names(raters, len(_tiers(rated[0])))
    return {r: tau_b([_tiers(s)[i] for s in rated], [values[s.name] for s in rated]) for i, r in enumerate(names)}


def summarize(sets: list[ValiditySet], values: dict[str, float], *, seen_families=(), raters=EYE_RATERS) -> dict:
    """Checks, violations, Kendall taus, the blob sets' ranks, from per-set values (the testable core)."""
    checks = order_checks(values, expected_pairs(sets))
    by_name = {s.name: s for s in sets}
    gens = [s for s in sets if s.cls in ("real", "generator") and s.name in values]
    cls_sets = [s for s in sets if (s.cls == "real" or s.strength == "moderate") and s.cls in CLASS_LEVEL
                and s.name in values]
    ranked = sorted(values, key=values.get)
    gen_ranked = sorted((s.name for s in gens), key=values.get)
    out = {
        "checks": checks,
        "violations": [c for c in checks if not c["ok"]],
        "kendall_tau": pairwise_tau(checks),
        "kendall_tau_generators": tau_b([0 if s.cls == "real" else s.tier for s in gens], [values[s.name] for s in gens]),
        "kendall_tau_raters": _rater_taus(gens, values, raters),
        "eye_leave_one_out": leave_one_out({s.name: _tiers(s) for s in gens if s.cls == "generator"}, values, raters)
        if any(s.cls == "generator" for s in gens) else {},
        "kendall_tau_classes": tau_b([CLASS_LEVEL[s.cls] for s in cls_sets], [values[s.name] for s in cls_sets]),
        "rules": {},
        "blob_ranks": {},
    }
    for c in checks:
        r = out["rules"].setdefault(c["rule"], {"pairs": 0, "violations": 0})
        r["pairs"] += 1
        r["violations"] += not c["ok"]
    for s in sets:
        if s.name in values and (s.group == "blobs" or (s.cls == "generator" and s.group in BLOB_GENERATORS)):
            out["blob_ranks"][s.name] = {"rank_all": ranked.index(s.name) + 1, "of_all": len(ranked)}
            if s.name in gen_ranked:
                out["blob_ranks"][s.name].update(rank_generators=gen_ranked.index(s.name) + 1, of_generators=len(gen_ranked))
    floor = values.get("real")
    violated = [s.name for s in sets if s.cls == "violated" and s.name in values]
    if violated and floor and floor > 0:
        near = min(violated, key=values.get)
        # how far the anatomy-violated set nearest to the reference stays above the real-vs-real floor
        out["closest_violated"] = {"set": near, "value": values[near], "x_floor": values[near] / floor}
    if seen_families:
        # the order must hold on the corruption families the network never saw while training
        unseen = [c for c in checks if not any(by_name[n].group in seen_families for n in (c["better"], c["worse"])
                                                if by_name[n].cls in ("degraded", "violated"))]
        out["unseen_families"] = {"seen": sorted(seen_families), "pairs": len(unseen),
                                  "violations": sum(not c["ok"] for c in unseen), "kendall_tau": pairwise_tau(unseen)}
    return out


def violation_noise(ref: np.ndarray, feats: dict[str, np.ndarray], violations: list[dict], *,
                    reps: int = NOISE_REPS, seed: int = 0, alpha: float = 0.05) -> int:
    """Adds to each violation the basic bootstrap interval of ``d = FID(worse) - FID(better)`` (both sets and the
    shared reference resampled, the reference draw common to the two, so the comparison is paired) and
    ``beyond_noise``: the whole interval below zero, an inversion that sampling at this N does not explain.
    Returns how many are. Basic, not percentile: resampling duplicates rows, which raises each FID by an amount
    that differs between sets (about 3-4 FID between the board's sets at N = 200, as much as the interval's
    half-width); ``2 d - quantiles`` takes that shift off to first order, as the FID interval does. A violation
    within the noise is still counted: the point order is what a user sees."""
    rng = numpy_rng(seed)
    stats: dict[str, TwoSampleFD] = {}
    n_beyond = 0
    for v in violations:
        a, b = (stats.setdefault(k, TwoSampleFD(feats[k], ref)) for k in (v["better"], v["worse"]))
        na, nb = len(feats[v["better"]]), len(feats[v["worse"]])
        d = []
        for _ in range(reps):
            ir = rng.integers(0, len(ref), len(ref))
            d.append(b(rng.integers(0, nb, nb), ir) - a(rng.integers(0, na, na), ir))
        q_lo, q_hi = np.quantile(d, [alpha / 2, 1 - alpha / 2])
        point = v["value_worse"] - v["value_better"]
        lo, hi = 2 * point - q_hi, 2 * point - q_lo
        v["difference_interval"] = [float(lo), float(hi)]
        v["beyond_noise"] = bool(hi < 0)
        n_beyond += v["beyond_noise"]
    return n_beyond


# --- the run ---------------------------------------------------------------------------------------------

def _features(images: torch.Tensor, name: str, extractors: dict, config: EvalConfig, cache: FeatureCache,
              device: str, desc: str) -> np.ndarray:
    src = array_source(images[:, 0].numpy().astype(np.float32), name=desc, root=None)
    feats, bad = extract_features(src, extractors, config, cache, device, desc)
    if bad:
        raise DataError(f"validity set {desc}: {bad[0][1]}")
    return feats[name].astype(np.float64)


def run_suite(extractor: str, *, data_root, protocol: ProtocolData, config: EvalConfig | None = None,
              n: int = DEFAULT_N, seed: int = 0, root=ROOT, progress_dir=PROGRESS_DIR,
              skip_missing: bool = False, corruption_names=None, log=None, noise_reps: int = NOISE_REPS) -> dict:
    """Measure every validity set's FID against the protocol's reference through ``extractor``; returns the
    result dict (per-set values, checks, violations, Kendall taus, reference dimensionality). ``noise_reps``
    bootstrap replicates tell each violation's sampling noise (``violation_noise``; 0: not measured)."""
    log = log or (lambda msg: None)
    config = config or EvalConfig()
    if extractor not in EXTRACTORS:
        raise UsageError(f"--extractor {extractor}: not a registered extractor; known: "
                         f"{', '.join(sorted(EXTRACTORS.names()))}")
    cls = EXTRACTORS.get(extractor)
    names = tuple(dict.fromkeys([n_ for n_ in (getattr(cls, "derived_from", None), extractor) if n_]))
    config = dataclasses.replace(config, extractors=names)
    device = resolve_device(config.device)
    nets = build_extractors(names, config, device)  # missing weights fail here, before any data is looked at
    data = SuiteData(data_root, protocol=protocol, n=n, seed=seed, root=root,
                     progress_dir=progress_dir, skip_missing=skip_missing, corruption_names=corruption_names)
    cache = FeatureCache(config.cache_dir, enabled=config.use_cache)
    t0 = time.perf_counter()
    ref = _features(data.reference(), extractor, nets, config, cache, device, "validity reference")
    log(f"reference: {len(ref)} images, {ref.shape[1]}-d features")
    sets, values, feats = [], {}, {}
    for s, x in data.sets():
        feats[s.name] = _features(x, extractor, nets, config, cache, device, s.name)
        values[s.name] = fid(real=ref, fake=feats[s.name]).value  # point estimate: no bootstrap interval (speed)
        sets.append(s)
        log(f"{s.name:<40} {values[s.name]:12.4g}")
    seen = tuple(getattr(nets[extractor], "training_corruptions", None) or TRAINING_CORRUPTIONS.get(extractor, ()))
    summary = summarize(sets, values, seen_families=seen)
    if noise_reps:
        log(f"sampling noise of the {len(summary['violations'])} violations ({noise_reps} bootstrap replicates)")
        summary["violations_beyond_noise"] = violation_noise(ref, feats, summary["violations"], reps=noise_reps,
                                                             seed=seed)
    e = nets[extractor]
    return {
        "suite": "cxrbench-validity", "suite_version": "3",
        "extractor": e.spec(), "protocol": data.protocol.name, "image_size": data.size,
        "data_root": str(data.data_root), "n_per_set": data.n, "n_reference": len(ref), "seed": seed,
        "metric": "fid", "floor": values.get("real"),
        "sets": [dict(dataclasses.asdict(s), value=values[s.name]) for s in sets],
        "skipped": data.skipped,
        "eye_tiers": GENERATOR_EYE_TIERS,
        "eye_panel": eye_panel(),
        "progress_eye_ties": {k: [list(t) for t in v] for k, v in PROGRESS_EYE_TIES.items()},
        "dimensionality": effective_dimensionality(ref),
        "seconds": round(time.perf_counter() - t0, 1),
        **summary,
    }


#: the letters that name the blinded sets (no I or O, which read as 1 and 0)
PANEL_LETTERS = "ABCDEFGHJKLMNPQRSTUVWXYZ"


def _grid(images: torch.Tensor, cols: int) -> np.ndarray:
    rows = [torch.cat(list(images[r * cols:(r + 1) * cols, 0]), dim=1) for r in range(len(images) // cols)]
    return (torch.cat(rows, dim=0).numpy() * 255).round().astype(np.uint8)


def write_panel_grids(out, *, real_paths: list, sets: dict[str, list], size: int = 128, k: int = 36,
                      seed: int = 0) -> dict[str, str]:
    """The blinded grids of an eye panel: ``out/grids/set_<letter>.png``, a ``sqrt(k) x sqrt(k)`` grid of ``k``
    images drawn (seeded) from each of ``sets`` (``{name: image files}``), the letters shuffled (seeded), and
    ``out/grids/real_reference.png`` from ``real_paths``; the letters' key goes to ``out/key.json``, outside
    the folder a rater is shown. Images as the suite reads them (centre square, ``size`` px). Returns the key."""
    cols = math.isqrt(k)
    if cols * cols != k:
        raise UsageError(f"panel grids: {k} images per grid is not a square number")
    if len(sets) > len(PANEL_LETTERS):
        raise UsageError(f"panel grids: {len(sets)} sets, at most {len(PANEL_LETTERS)} letters")
    grids = Path(out) / "grids"
    grids.mkdir(parents=True, exist_ok=True)
    names = list(sets)
    order = numpy_rng(seed).permutation(len(names))
    key = {PANEL_LETTERS[i]: names[j] for i, j in enumerate(order)}

    def save(files, path):
        if len(files) < k:
            raise DataError(f"panel grids: {path.stem} has {len(files)} images, {k} are needed")
        buf = io.BytesIO()
        Image.fromarray(_grid(load_square(_pick(list(files), k, seed), size), cols)).save(buf, format="PNG")
        atomic_write_bytes(path, buf.getvalue())

    for letter, name in key.items():
        save(sets[name], grids / f"set_{letter}.png")
    save(real_paths, grids / "real_reference.png")
    atomic_write_bytes(Path(out) / "key.json", (json.dumps(key, indent=1, sort_keys=True) + "\n").encode())
    return key


def plot(result: dict, path) -> Path:
    """Sets on the x axis grouped by class, FID on a log y axis, the real-vs-real floor as a line."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    colours = {"real": "black", "degraded": "tab:blue", "violated": "tab:red", "population": "tab:purple",
               "generator": "tab:green", "progress": "tab:orange"}
    sets = sorted(result["sets"], key=lambda s: (CLASSES.index(s["cls"]), s["group"] if s["cls"] == "progress" else "",
                                                 s["tier"] or 0, s["name"]))
    fig, ax = plt.subplots(figsize=(max(8, 0.32 * len(sets)), 5))
    for i, s in enumerate(sets):
        v = max(s["value"], 1e-6)
        marker = "o" if s["strength"] != "mild" else "v"
        ax.scatter(i, v, color=colours[s["cls"]], marker=marker, s=36, zorder=3)
    if result.get("floor"):
        ax.axhline(max(result["floor"], 1e-6), color="grey", ls="--", lw=1, label="real-vs-real floor")
    ax.set_yscale("log")
    ax.set_xticks(range(len(sets)))
    ax.set_xticklabels([s["name"].removeprefix("gen:").removeprefix("progress:") for s in sets], rotation=75,
                       fontsize=7, ha="right")
    for c, col in colours.items():
        if any(s["cls"] == c for s in sets):
            ax.scatter([], [], color=col, label=c)
    ax.scatter([], [], color="grey", marker="v", label="mild strength")
    ax.legend(fontsize=7, loc="upper left")
    tau = result.get("kendall_tau")
    ax.set_title(f"validity of {result['extractor']['name']} ({result['protocol']}): FID vs reference; "
                 f"{len(result['violations'])} of {len(result['checks'])} expected orders violated, "
                 f"tau {tau:+.2f}" if tau is not None else "", fontsize=9)
    ax.set_ylabel("FID (log)")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
