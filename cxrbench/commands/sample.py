"""``cxrbench sample RUN``: draw images from a trained model folder into PNGs plus ``manifest.csv``."""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from ..config import resolve_device
from ..data import ImageFolder
from ..data.imageset import select_split
from ..data.labels import LABELS, canonical_label
from ..data.transforms import CXRTransform
from ..errors import DataError, UsageError
from ..features.base import FeatureKind
from ..fileio import atomic_write_bytes, read_json_object
from ..generator import batch_seed, iter_samples
from ..protocols.cxr64_splits import select_cxr64_split
from ..protocols.cxr128_splits import select_cxr128_split
from ..registry import EXTRACTORS, GENERATORS

EPILOG = """\
OUT receives 00000.png, 00001.png, ... and manifest.csv with columns path, one 0/1 column per label the
model was given (LABELS order: the 14 NIH findings and No Finding), and seed. The folder evaluates
directly with `cxrbench evaluate`. A conditional model given no labels draws label vectors from its
training labels (they are written to the manifest too). Images are deterministic given --seed and
--batch-size, and are the images cxrbench.evaluate_generator(model, N, ..., seed=S, batch_size=B) evaluates.

examples:
  cxrbench sample runs/lsgan32 --n 1000 --out samples/lsgan32
  cxrbench sample runs/fs --n 200 --out samples/fs-edema --labels "Edema,Effusion"
  cxrbench sample runs/fs --n 500 --out samples/fs-like-test --labels-csv test/labels.csv --bit-depth 16
  cxrbench sample runs/ldm --n 16 --out samples/ldm-effusion --prompt "chest x-ray, effusion, bottom right"
  cxrbench sample runs/diffusevae --reconstruct ../shared/data/nih1000_64px/images/test --out samples/dvae-rec
  cxrbench sample runs/vae --reconstruct ../shared/data/nih_extra_256px --reconstruct-split cxr128-heldout \
      --out leaderboard/samples/vae-reconstructions      # the held-out real images submit --reconstructions scores
  cxrbench sample runs/pggan --n 64 --out samples/pneumonia --optimize-toward Pneumonia --weights random
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.epilog = EPILOG
    p.add_argument("run", help="trained model folder (config.json + model.pt), e.g. the --out of cxrbench train")
    p.add_argument("--n", type=int, default=None, help="number of images; required, except with --labels-csv "
                   "(default: its rows) or --reconstruct (default: every source image)")
    p.add_argument("--out", required=True, help="folder to write PNGs and manifest.csv into")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--labels", default=None,
                   help='comma-separated labels present in every image, e.g. "Edema,Effusion"')
    g.add_argument("--labels-csv", default=None, help="CSV with one column per label (0/1); row i conditions image i")
    g.add_argument("--reconstruct", metavar="DIR", default=None,
                   help="paired mode (vae, gmvae, fs-gmvae, diffusevae): reconstruct every image of DIR; manifest "
                   "column source names it")
    g.add_argument("--prompt", default=None,
                   help='text prompt for every image (ldm), e.g. "chest x-ray, edema, top left"')
    p.add_argument("--reconstruct-split", metavar="SPLIT", default=None,
                   help="with --reconstruct: only this split of DIR (cxr128-heldout: the cxr128 protocol's held-out "
                   "real images, of patients no bundled model saw; or a labels.csv split, half0, half1)")
    p.add_argument("--seed", type=int, default=0, help="seed of the first batch (each batch's seed derives from it)")
    p.add_argument("--batch-size", type=int, default=64, help="images per sampling batch")
    p.add_argument("--bit-depth", type=int, choices=(8, 16), default=8, help="PNG bit depth")
    p.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda, cuda:1, ...")
    p.add_argument("--overwrite", action="store_true", help="write into an OUT that already holds a manifest")
    o = p.add_argument_group("latent optimisation toward a class (Segal et al. 2020; unconditional pggan)")
    o.add_argument("--optimize-toward", metavar="LABEL", default=None,
                   help="optimise each latent so that the classifier finds LABEL")
    o.add_argument("--classifier", default="xrv-classifier", help="registered probabilities extractor to guide with")
    o.add_argument("--weights", default=None, help="classifier weights: a path, or 'random' (offline smoke runs)")
    o.add_argument("--opt-steps", type=int, default=100, help="Adam steps on the latents")
    o.add_argument("--opt-lr", type=float, default=0.05, help="Adam learning rate on the latents")


def load_model(run_dir: str | Path, device):
    run_dir = Path(run_dir)
    cfg = run_dir / "config.json"
    if not cfg.is_file():
        raise DataError(f"{cfg}: missing; {run_dir} is not a trained model folder (train one with cxrbench train)")
    name = read_json_object(cfg).get("generator")
    if not name:
        raise DataError(f"{cfg}: names no generator; was it written by save_pretrained?")
    model = GENERATORS.get(name).from_pretrained(run_dir)
    return model.to(device).eval()


def parse_label_names(text: str) -> list[str]:
    names = []
    for raw in text.split(","):
        if not raw.strip():
            continue
        lab = canonical_label(raw)
        if lab is None:
            raise UsageError(f"--labels: unknown label {raw.strip()!r}; known labels: {', '.join(LABELS)}")
        names.append(lab)
    return names


def read_label_csv(path: str | Path):
    """Label vectors (rows, 15) from a CSV whose label columns use LABELS names (NaN/empty -> 0)."""
    import pandas as pd

    path = Path(path)
    try:
        df = pd.read_csv(path)
    except FileNotFoundError:
        raise DataError(f"{path}: labels CSV not found") from None
    except Exception as e:
        raise DataError(f"{path}: cannot be read as CSV ({e.__class__.__name__})") from None
    cols = {canonical_label(str(c)): c for c in df.columns if canonical_label(str(c)) is not None}
    if not cols:
        raise DataError(f"{path}: no label columns; name columns as in cxrbench.data.labels.LABELS ({', '.join(LABELS)})")
    if len(df) == 0:
        raise DataError(f"{path}: no rows")
    out = np.zeros((len(df), len(LABELS)), dtype=np.float32)
    for j, lab in enumerate(LABELS):
        if lab in cols:
            vals = pd.to_numeric(df[cols[lab]], errors="coerce").to_numpy(dtype=np.float64)
            bad = ~np.isnan(vals) & ~np.isin(vals, (0.0, 1.0))
            if bad.any():
                raise DataError(f"{path}: column {cols[lab]!r} must hold 0/1 (or empty), found {vals[bad][0]!r}")
            out[:, j] = np.nan_to_num(vals, nan=0.0)
    return out


def encode_png(image: np.ndarray, bit_depth: int) -> bytes:
    """One (H, W) float image in [0, 1] -> grayscale PNG bytes (8- or 16-bit), rounded to nearest."""

    if bit_depth == 16:
        pil = Image.fromarray(np.round(image * 65535).astype(np.uint16))
    else:
        pil = Image.fromarray(np.round(image * 255).astype(np.uint8))  # 2-D uint8: mode L
    buf = io.BytesIO()
    pil.save(buf, format="PNG")
    return buf.getvalue()


def write_manifest(out: Path, columns: list[str], rows: list[dict]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    atomic_write_bytes(out / "manifest.csv", buf.getvalue().encode())


class ImageClassifier:
    """Images ``(N, 1, H, W)`` in [0, 1] -> class probabilities, differentiable in the images.

    Wraps a registered probabilities extractor; a derived one (``xrv-classifier``, which maps cached ``xrv``
    features through its head) is composed with the embedding extractor it is derived from.
    """

    def __init__(self, clf, base=None):
        self.clf, self.base = clf, base
        self.feature_names = list(clf.feature_names or [])

    def __call__(self, x):
        if self.base is None:
            return self.clf.forward(self.clf.preprocess(x))
        return self.clf.from_features(self.base.forward(self.base.preprocess(x)))


def build_classifier(name: str, weights: str | None, device) -> ImageClassifier:
    def make(n):
        cls = EXTRACTORS.get(n)
        try:
            return cls(weights=weights or "auto", device=str(device))
        except TypeError:
            raise UsageError(f"classifier {n!r} cannot be built with weights={weights!r}") from None

    clf = make(name)
    if getattr(clf, "kind", FeatureKind.PROBABILITIES) != FeatureKind.PROBABILITIES:
        raise UsageError(f"--classifier {name!r} gives {clf.kind} features, not class probabilities")
    base_name = getattr(clf, "derived_from", None)
    return ImageClassifier(clf, make(base_name) if base_name else None)


def _check_args(args, out: Path) -> None:
    """The flag mistakes caught before the model is loaded."""
    if (out / "manifest.csv").exists() and not args.overwrite:
        raise UsageError(f"{out}: already holds samples (manifest.csv); choose a new --out or pass --overwrite")
    if args.batch_size < 1:
        raise UsageError("--batch-size must be at least 1")
    if args.n is None and not args.labels_csv and args.reconstruct is None:
        raise UsageError("--n is required: give the number of images (or --labels-csv, whose rows it then is)")
    if args.reconstruct_split is not None and args.reconstruct is None:
        raise UsageError("--reconstruct-split selects images of --reconstruct DIR; give --reconstruct DIR too")


def requested_labels(args) -> tuple[np.ndarray | None, int]:
    """(the label vector of each image or None, the number of images) from --labels-csv, --n and --labels.

    None: unconditional, or a conditional model draws its own."""
    labels = None
    if args.labels_csv:
        labels = read_label_csv(args.labels_csv)
        n = args.n if args.n is not None else len(labels)
        labels = np.resize(labels, (n, len(LABELS)))  # rows repeat when N exceeds the CSV
    else:
        n = args.n
    if n is None or n < 1:
        raise UsageError("--n: give the number of images (at least 1)")
    if args.labels is not None:
        vec = np.zeros(len(LABELS), dtype=np.float32)
        for lab in parse_label_names(args.labels):
            vec[LABELS.index(lab)] = 1.0
        labels = np.tile(vec, (n, 1))
    return labels, n


def guided_sampler(args, model, labels, conditional: bool, device):
    """(sample_fn, log_p, target label) for --optimize-toward; sample_fn appends (m, log p before, after) of
    each batch to log_p."""
    if labels is not None and not conditional:
        raise UsageError("--labels/--labels-csv need a conditional model; drop them with --optimize-toward")
    if not hasattr(model, "optimize_toward"):
        raise UsageError(f"{model.name} does not support --optimize-toward (pggan does)")
    target = parse_label_names(args.optimize_toward)
    if len(target) != 1:
        raise UsageError("--optimize-toward: give exactly one label")
    classifier = build_classifier(args.classifier, args.weights, device)
    log_p = []

    def sample_fn(m, *, labels, seed):
        imgs, info = model.optimize_toward(target[0], m, classifier=classifier, steps=args.opt_steps,
                                           lr=args.opt_lr, seed=seed, labels=labels)
        log_p.append((m, info["log_p_start"], info["log_p_end"]))
        return imgs

    return sample_fn, log_p, target[0]


def write_samples(args, model, out: Path, n: int, labels, label_columns: list[str], sample_fn,
                  target: str | None) -> list[dict]:
    """Draw and write the N PNGs; returns the manifest rows."""
    from tqdm.auto import tqdm

    out.mkdir(parents=True, exist_ok=True)
    width = max(5, len(str(n - 1)))
    rows = []
    bar = tqdm(total=n, desc=f"sample {model.name}", dynamic_ncols=True, file=sys.stderr)
    for batch in iter_samples(model, n, labels=labels, seed=args.seed, batch_size=args.batch_size,
                              prompt=args.prompt, sample_fn=sample_fn):
        arr = batch.images.numpy()[:, 0]
        for i in range(len(arr)):
            rel = f"{batch.start + i:0{width}d}.png"
            atomic_write_bytes(out / rel, encode_png(arr[i], args.bit_depth))
            row = {"path": rel}
            if batch.labels is not None:
                row.update({c: int(v) for c, v in zip(label_columns, batch.labels[i].tolist())})
            if target is not None:
                row[target] = 1  # requested of the classifier-guided sample
            if args.prompt is not None:
                row["prompt"] = args.prompt
            row["seed"] = batch.seed
            rows.append(row)
        bar.update(len(arr))
    bar.close()
    return rows


def sample_info(args, model, n: int, target: str | None, log_p: list) -> dict:
    """What ``sample_info.json`` records of the draw."""
    info = {
        "model": model.name,
        "run": str(Path(args.run).resolve()),
        "n": n,
        "seed": args.seed,
        "batch_size": args.batch_size,
        "bit_depth": args.bit_depth,
        "optimize_toward": target,
        "classifier": args.classifier if target is not None else None,
    }
    if log_p:  # mean log p(target | image) over the images, before and after optimising the latents
        total = sum(k for k, _, _ in log_p)
        info["log_p_start"] = sum(k * a for k, a, _ in log_p) / total
        info["log_p_end"] = sum(k * b for k, _, b in log_p) / total
    return info


def run(args) -> int:
    out = Path(args.out)
    _check_args(args, out)  # before the model is loaded
    device = resolve_device(args.device)
    model = load_model(args.run, device)
    if args.reconstruct is not None:
        return run_reconstruct(args, model, out)
    conditional = bool(getattr(model, "conditional", False))
    labels, n = requested_labels(args)
    if args.prompt is not None and not hasattr(model, "parse_prompt"):
        raise UsageError(f"{model.name} takes no text prompt (ldm does); use --labels")
    sample_fn, log_p, target = None, [], None
    if args.optimize_toward:
        sample_fn, log_p, target = guided_sampler(args, model, labels, conditional, device)
    if labels is not None and not conditional:
        raise UsageError(
            f"{model.name} is unconditional: drop --labels/--labels-csv"
            + (" (or use --optimize-toward LABEL)" if hasattr(model, "optimize_toward") else "")
        )
    label_columns = list(LABELS) if conditional or labels is not None or args.prompt is not None else []
    rows = write_samples(args, model, out, n, labels, label_columns, sample_fn, target)

    columns = ["path"] + label_columns
    if target is not None and target not in columns:
        columns.append(target)
    if args.prompt is not None:
        columns.append("prompt")
    columns.append("seed")
    write_manifest(out, columns, rows)
    info = sample_info(args, model, n, target, log_p)
    atomic_write_bytes(out / "sample_info.json", json.dumps(info, indent=2, sort_keys=True).encode())
    print(out)
    return 0


def reconstruct_split(source, split: str):
    """The images of ``source`` in ``split``: a protocol split (``cxr128-heldout``, ``cxr64-...``) or a
    ``labels.csv`` split / half; ``source`` ids (and so the manifest's ``source`` column) stay relative to DIR."""
    if split.startswith("cxr128-"):
        return select_cxr128_split(source, split)
    if split.startswith("cxr64-"):
        return select_cxr64_split(source, split)
    return select_split(source, split)


def run_reconstruct(args, model, out: Path) -> int:
    """Paired mode: one reconstruction per source image, manifest columns path, source (relative to DIR), seed."""
    import torch
    from tqdm.auto import tqdm

    if not hasattr(model, "reconstruct"):
        raise UsageError(f"{model.name} has no paired reconstruction mode (vae, gmvae, fs-gmvae and diffusevae "
                         "have); drop --reconstruct")
    if args.optimize_toward:
        raise UsageError("--reconstruct and --optimize-toward do not combine")
    size = model.config.image_size
    source = ImageFolder(args.reconstruct).source
    if args.reconstruct_split is not None:
        source = reconstruct_split(source, args.reconstruct_split)
    src = ImageFolder(source, transform=CXRTransform(image_size=size))
    n = len(src) if args.n is None else min(args.n, len(src))
    if n < 1:
        raise UsageError(f"--reconstruct {args.reconstruct}: no images to reconstruct")
    conditional = getattr(model, "conditional", False)
    known = src.source.label_matrix()
    if conditional and (known is None or np.isnan(known).all()):
        raise UsageError(f"--reconstruct {args.reconstruct}: {model.name} is conditional and needs the source "
                         "images' labels; put a labels.csv (path and label columns) in that folder")
    out.mkdir(parents=True, exist_ok=True)
    width = max(5, len(str(n - 1)))
    rows = []
    bar = tqdm(total=n, desc=f"reconstruct {model.name}", dynamic_ncols=True, file=sys.stderr)
    for b, start in enumerate(range(0, n, args.batch_size)):
        m = min(args.batch_size, n - start)
        seed = batch_seed(args.seed, b)
        items = [src[i] for i in range(start, start + m)]
        batch = torch.stack([it[0] for it in items])
        # a conditional model reconstructs each image under its own labels (unknown ones count as absent)
        kw = {"labels": torch.stack([it[1] for it in items])} if conditional else {}
        arr = model.reconstruct(batch, seed=seed, **kw).detach().cpu().clamp(0, 1).numpy()[:, 0]
        for i in range(m):
            rel = f"{start + i:0{width}d}.png"
            atomic_write_bytes(out / rel, encode_png(arr[i], args.bit_depth))
            rows.append({"path": rel, "source": str(src.ids[start + i]), "seed": seed})
        bar.update(m)
    bar.close()
    write_manifest(out, ["path", "source", "seed"], rows)
    info = {"model": model.name, "run": str(Path(args.run).resolve()), "n": n, "seed": args.seed,
            "batch_size": args.batch_size, "bit_depth": args.bit_depth,
            "reconstruct": str(Path(args.reconstruct).resolve()), "reconstruct_split": args.reconstruct_split}
    atomic_write_bytes(out / "sample_info.json", json.dumps(info, indent=2, sort_keys=True).encode())
    print(out)
    return 0
