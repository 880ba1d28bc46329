"""``cxrbench train NAME``: train a registered generator (or representation model) on an image folder."""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import sys
from pathlib import Path

from ..data import ImageFolder
from ..data.imageset import select_split
from ..data.transforms import CXRTransform
from ..errors import UsageError
from ..fileio import atomic_write_bytes
from ..kernels import cpu_kernels
from ..protocols.cxr64_splits import protocol_overlap, select_cxr64_split
from ..protocols.cxr128 import load_features as cxr128_features
from ..protocols.cxr128_splits import select_cxr128_split
from ..registry import GENERATORS, REPRESENTATIONS
from ..training import TrainOptions, config_from_overrides, config_to_dict, load_config_file

EPILOG = """\
The model folder (--out) ends up holding config.json + model.pt (sample it with `cxrbench sample`),
checkpoint.pt (run the same command again to resume, or with a larger --steps to train further),
losses.csv, train_state.json and train_info.json. A --config TOML file holds overrides of the model's
Config fields only, e.g. `beta = 0.1` or `channels = [16, 32, 64]`.

examples:
  cxrbench train lsgan --data ../shared/data/nih1000_64px --split cxr64-train --image-size 32 --out runs/lsgan32 \\
      --steps 2000
  cxrbench train vae --data ../shared/data/nih1000_64px --split cxr64-train --image-size 64 --out runs/vae \\
      --config vae.toml --max-minutes 10 --steps 100000
  cxrbench train fs-gmvae --data imgs/ --labels imgs/labels.csv --image-size 224 --equalize --out runs/fs
  cxrbench train moco --data ../shared/data/nih1000_64px --split cxr64-train --image-size 64 --out runs/moco --epochs 5
  # on the cxr64 protocol's patient-disjoint NIH training split (what the leaderboard's models train on)
  cxrbench train ddpm --data ../shared/data/nih1000_64px --split cxr64-train --image-size 64 --out runs/ddpm
  # the cxr128 protocol's own feature network (every public radiograph but its reference / held-out patients)
  cxrbench train cxr128-net --data ../shared/data --out runs/cxr128 --config cxr128.toml --steps 400 --threads 1
  # the cxr128 layout network (version 4: its logits follow the embedding; python -m baselines.cxr128net build --layout-run)
  cxrbench train cxr128-layout --data ../shared/data --out runs/cxr128-layout --steps 4000 --seed 0 --threads 1
  # the retired cxr64 protocol's network (its data: NIH cxr64-train + Kermany train + adult sets)
  cxrbench train cxr64-net --data ../shared/data --out runs/cxr64 --epochs 30
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.epilog = EPILOG
    p.add_argument("name", help="registered model name (cxrbench.generators or cxrbench.representations)")
    p.add_argument("--data", required=True, help="folder of training images (labels.csv inside is used if present)")
    p.add_argument("--labels", default=None, help="labels CSV (first column path, one column per label)")
    p.add_argument("--split", default=None,
                   help="train only on the rows whose labels.csv 'split' column has this value (e.g. train); "
                        "half0/half1: a deterministic patient-wise half; cxr64-train: the cxr64 protocol's NIH split; "
                        "cxr64-disjoint: any NIH folder without the protocol's reference and held-out patients; "
                        "all: every image (default: all, refused on a folder holding the cxr64 protocol's "
                        "reference or held-out images)")
    p.add_argument("--image-size", type=int, default=None, help="train at N x N pixels (sets the Config's image_size)")
    p.add_argument("--out", required=True, help="model folder to write (and resume from)")
    p.add_argument("--config", default=None, help="TOML file of Config overrides")
    p.add_argument("--steps", type=int, default=None, help="total optimisation steps")
    p.add_argument("--epochs", type=float, default=None, help="total passes over the data (with --steps: first hit)")
    p.add_argument("--max-minutes", type=float, default=None, help="stop after this much wall clock (resumable)")
    p.add_argument("--cpu-minutes", type=float, default=None,
                   help="stop once the run (resumed calls included) has used this much CPU time: a recipe's budget, "
                        "fair under other load")
    p.add_argument("--keep-cpu-minutes", type=_minutes_list, default=(), metavar="M[,M...]",
                   help="also keep the model as it stands at these CPU minutes of the run, in OUT/cpu-<M>min/ "
                        "(a learning curve of one run; e.g. 5,15,30)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for torch (a recipe's budget is stated per core count)")
    p.add_argument("--batch-size", type=int, default=None, help="override the Config's batch_size")
    p.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda, cuda:1, ...")
    p.add_argument("--seed", type=int, default=0, help="seed for initialisation, data order and noise")
    p.add_argument("--checkpoint-every", type=int, default=500, help="steps between checkpoints")
    p.add_argument("--num-workers", type=int, default=0, help="data-loading worker processes")
    p.add_argument("--equalize", action="store_true",
                   help="histogram equalisation (Kumar & Triana's preprocessing; a recipe's [data] equalize = true)")
    p.add_argument("--no-crop", action="store_true", help="squash to a square instead of resize + center crop")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def resolve_model(name: str):
    """``name`` in GENERATORS, else in REPRESENTATIONS (``cxrbench train moco``)."""
    for registry in (GENERATORS, REPRESENTATIONS):
        if name in registry:
            return registry.get(name)
    raise UsageError(
        f"unknown model {name!r}; generators: {', '.join(GENERATORS.names()) or '(none)'}; "
        f"representation models: {', '.join(REPRESENTATIONS.names()) or '(none)'}"
    )


def build_config(cls, args) -> object:
    config = load_config_file(args.config, cls.Config) if args.config else cls.Config()
    flags = {}
    names = {f.name for f in dataclasses.fields(cls.Config)}
    for field, value in (("image_size", args.image_size), ("batch_size", args.batch_size)):
        if value is None:
            continue
        if field not in names:
            raise UsageError(f"--{field.replace('_', '-')}: {cls.__name__}'s Config has no {field}")
        flags[field] = value
    return config_from_overrides(cls.Config, flags, source="command line", base=config) if flags else config


def _refuse_other_preprocessing(out: Path, spec) -> None:
    """A resumed run must see its images preprocessed as before (the model's Config does not hold the
    transform, so the trainer's own config check cannot catch, e.g., --equalize added on resume)."""
    info_path = out / "train_info.json"
    if not (out / "checkpoint.pt").is_file() or not info_path.is_file():
        return
    try:
        before = json.loads(info_path.read_text()).get("transform")
    except (OSError, ValueError, AttributeError):
        return  # an unreadable info file: the checkpoint's own checks still apply
    if before is not None and before != spec:
        changed = sorted(k for k in set(before) | set(spec) if before.get(k) != spec.get(k)) if (
            isinstance(before, dict) and isinstance(spec, dict)) else ["transform"]
        raise UsageError(
            f"{out}: its checkpoint was trained with other preprocessing ({', '.join(changed)} differ; "
            f"see {info_path.name}); use a new --out folder, or the same flags (e.g. --equalize) to resume"
        )


def _check_protocol_leak(source, args) -> None:
    """A folder holding a protocol's reference or held-out images (``nih_extra_256px`` for cxr128,
    ``nih1000_64px`` for cxr64, or another NIH folder with their patients): with no --split, refused (every
    number of the model under that protocol would be measured on its training data); with a split of the
    folder's own, a warning. ``--split all`` says it is meant."""
    if args.split == "all":
        return
    for name, features, train, other in (
            ("cxr128", cxr128_features, "--split cxr128-train (the protocol's training split)",
             "--split cxr128-train (without the protocol's reference and held-out patients)"),
            ("cxr64", None, "--split cxr64-train (the protocol's training split)",
             "--split cxr64-disjoint (without the protocol's reference and held-out patients)")):
        seen = protocol_overlap(source, features)
        n = max(seen["images"], seen["patient_images"])
        if not n:
            continue
        use = train if seen["train_split_present"] else other
        which = "images of" if seen["images"] else "images of patients in"
        what = (f"{n} of the {len(source)} images{'' if args.split is None else f' of split {args.split!r}'} in "
                f"{args.data} are {which} the {name} protocol's reference or held-out set, so the model's {name} "
                "numbers would be measured on its training data")
        if args.split is None:
            raise UsageError(f"{what}; pass {use}, or --split all to train on every image anyway")
        print(f"cxrbench train: warning: {what}; {use} avoids that", file=sys.stderr)


def _minutes_list(text: str) -> tuple[float, ...]:
    try:
        marks = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give CPU minutes separated by commas, e.g. 5,15,30") from None
    if not marks or any(not m > 0 for m in marks):
        raise argparse.ArgumentTypeError(f"{text!r}: give positive CPU minutes separated by commas, e.g. 5,15,30")
    return marks


def run(args) -> int:
    if args.threads is not None:
        if args.threads < 1:
            raise UsageError(f"--threads {args.threads}: give 1 or more")
        import torch

        torch.set_num_threads(args.threads)
    cls = resolve_model(args.name)
    config = build_config(cls, args)
    size = getattr(config, "image_size", None)
    if size is None:
        raise UsageError(f"{args.name}: its Config has no image_size; cannot choose the training resolution")
    if hasattr(cls, "training_dataset"):
        # a model that fixes its own training data (the cxr64 network: several folders, protocol splits)
        transform = None
        dataset = cls.training_dataset(args.data, config)
    else:
        transform = CXRTransform(image_size=size, crop=not args.no_crop, equalize=args.equalize)
        # the split is chosen after --labels is attached, so a split column in that CSV counts too
        source = ImageFolder(args.data, labels_csv=args.labels).source
        if args.split and args.split.startswith("cxr64-"):
            source = select_cxr64_split(source, args.split)
        elif args.split and args.split.startswith("cxr128-"):
            source = select_cxr128_split(source, args.split)
        else:
            source = select_split(source, args.split)
            _check_protocol_leak(source, args)
        dataset = ImageFolder(source, transform=transform, cache=True)  # CXRTransform is deterministic
    options = TrainOptions(
        steps=args.steps,
        epochs=args.epochs,
        max_minutes=args.max_minutes,
        cpu_minutes=args.cpu_minutes,
        keep_cpu_minutes=tuple(args.keep_cpu_minutes),
        seed=args.seed,
        checkpoint_every=args.checkpoint_every,
        num_workers=args.num_workers,
        progress=not args.quiet,
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    spec = transform.spec() if transform is not None else "model-defined"
    _refuse_other_preprocessing(out, spec)
    info = {
        "model": args.name,
        "data": str(Path(args.data).resolve()),
        "labels": str(Path(args.labels).resolve()) if args.labels else None,
        "split": args.split or "all",
        "n_images": len(dataset),
        "transform": spec,
        "config": config_to_dict(config),
        "cpu_kernels": cpu_kernels(),  # same seed, same bits only with the same kernels
    }
    atomic_write_bytes(out / "train_info.json", json.dumps(info, indent=2, sort_keys=True).encode())
    # the same call for every model; pass only the keywords its train() takes (an outside model may
    # implement train(dataset, config, out_dir) without the trainer's options)
    kwargs = {"options": options, "device": args.device}
    params = inspect.signature(cls.train).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        kwargs = {k: v for k, v in kwargs.items() if k in params}
    cls.train(dataset, config, out, **kwargs)
    state_path = out / "train_state.json"
    if state_path.is_file():
        state = json.loads(state_path.read_text())
        minutes = state["elapsed_s"] / 60
        print(f"{args.name}: {state['step']} steps ({state['stopped_because']}), {minutes:.1f} min -> {out}",
              file=sys.stderr)
    print(out)
    return 0
