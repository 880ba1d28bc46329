"""``cxrbench reproduce RECIPE.toml``: one leaderboard row end to end (train, sample with a fixed seed, submit).

A recipe is a TOML file (``leaderboard/recipes/cxr128/NAME.toml``) holding everything that decides the row:
    [model]                          # a registered generator and overrides of its Config fields
    name = "lsgan"
    config = { image_size = 64 }
    [data]                           # training images; split: a labels.csv split value or a protocol's
    path = "../shared/data/nih_extra_256px"  # (cxr128-train); equalize = true: histogram equalisation of
    split = "cxr128-train"                   # every training image (Kumar & Triana; `train --equalize`)
    [train]                          # trainer budget: cpu_minutes is the run's own clock (a rerun adds
    seed = 0                         # nothing), threads the torch CPU threads it is stated for
    cpu_minutes = 60
    threads = 1
    steps = 10000000
    [sample]
    n = 300
    seed = 0
    [submit]                         # the protocol it is submitted under (default cxr128)
    protocol = "cxr128"
    [card]                           # the model card (model.toml fields)
    name = "LSGAN-64"
    ...

Earlier training stages (the Mphasis white paper: a MoCo encoder, then plain DiffuseVAE, then its representation
fine-tune) are ``[[stage]]`` tables, each trained into ``runs/<recipe>-<id>`` before ``[model]``; a string
``"{id}"`` in a later config is replaced by that stage's folder::
    [[stage]]
    id = "moco"
    name = "moco"
    config = { image_size = 64 }
    train = { cpu_minutes = 3, threads = 1 }
    [model]
    name = "diffusevae"
    config = { rep_lambda = 0.1, rep_checkpoint = "{moco}" }

A ``keep_cpu_minutes = [5, 15, 30]`` in ``[train]`` (or a stage's ``train``) keeps the model at those CPU
minutes of the run; each kept model is sampled (``[curve] n`` images, default ``[sample] n``, seed ``[curve]
seed``) and evaluated under the recipe's protocol, and its ``[curve] metrics`` (default: the protocol's
headline) become the entry's learning curve, at the CPU minutes of the whole recipe (earlier stages
included), with the entry itself as the last point.

An ``[augment]`` section (``task = "Edema vs No Finding"``, ``n_per_class = 43``, ``seed = 0``) adds the
entry's augmentation block: after training, the model samples ``n_per_class`` images of each class of the task
(``sample --labels-csv``, one requested class per row) into ``<samples-dir>/<recipe>-augment``, and submit
passes that folder as ``--augment-samples``.

A model that reconstructs (vae, gmvae, fs-gmvae, diffusevae) gets the entry's reconstruction block from a
``[reconstruct]`` table: after sampling, ``sample RUN --reconstruct PATH --reconstruct-split SPLIT`` writes its
reconstructions of those real images to ``<samples-dir>/<recipe>-reconstructions`` and ``submit
--reconstructions`` scores them (``cxrbench.publish.reconstruction_block``)::
    [reconstruct]
    split = "cxr128-heldout"         # path: default [data] path

Each step is the subcommand a user would type (``train``, ``sample``, ``submit``), so a recipe reproduces
exactly what those commands do; the commands it runs are printed first.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from pathlib import Path

from ..errors import UsageError
from ..fileio import atomic_write_bytes, read_toml
from ..protocols.augmentation.labels import parse_task
from ..publish.card import card_from_dict
from ..registry import PROTOCOLS

EPILOG = """examples:
  cxrbench reproduce leaderboard/recipes/cxr128/lsgan.toml --samples-dir leaderboard/samples/cxr128  # a board row
  cxrbench reproduce leaderboard/recipes/cxr128/ddpm.toml --dry-run        # print the commands only
  cxrbench reproduce leaderboard/recipes/cxr128/vae.toml --max-minutes 1   # a shorter budget (not the recipe's row)
"""

#: the protocol a recipe without ``[submit] protocol`` is submitted under (the default protocol's)
DEFAULT_PROTOCOL = "cxr128"

TRAIN_KEYS = {"seed", "max_minutes", "cpu_minutes", "threads", "steps", "epochs", "batch_size", "device",
              "checkpoint_every", "keep_cpu_minutes"}
SECTIONS = {"model": {"name", "config"}, "data": {"path", "split", "labels", "equalize"}, "train": TRAIN_KEYS,
            "stage": None,
            "sample": {"n", "seed", "batch_size", "bit_depth"}, "card": None, "submit": {"protocol"},
            "curve": {"n", "seed", "metrics"}, "augment": {"task", "n_per_class", "seed", "batch_size"},
            "reconstruct": {"split", "path", "seed", "batch_size"},
            "gpu": None, "notes": None}


def add_arguments(p) -> None:
    p.add_argument("recipe", type=Path, help="recipe TOML file")
    p.add_argument("--runs", type=Path, default=Path("runs"), help="where the model folder goes (default runs/)")
    p.add_argument("--samples-dir", type=Path, default=Path("leaderboard/samples"),
                   help="where the samples folder goes (default leaderboard/samples/)")
    p.add_argument("--entries", type=Path, default=Path("leaderboard/entries"), help="entries folder")
    p.add_argument("--max-minutes", type=float, default=None, help="override the recipe's training budget")
    p.add_argument("--steps", type=int, default=None,
                   help="train the model exactly this many steps, with no time budget (the steps an entry's card "
                        "records reproduce its weights on a machine of another speed)")
    p.add_argument("--force", action="store_true", help="replace an existing entry and samples")
    p.add_argument("--dry-run", action="store_true", help="print the commands and stop")
    p.add_argument("--train-only", action="store_true",
                   help="run the training stages only (resumable); sample and submit later, e.g. once the protocol "
                        "the entry is made under is final")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def load_recipe(path: Path) -> dict:
    recipe = read_toml(path, "recipe file")
    for section, value in recipe.items():
        if section not in SECTIONS:
            raise UsageError(f"{path}: unknown section [{section}]; recipes have {', '.join(SECTIONS)}")
        allowed = SECTIONS[section]
        if allowed is not None and isinstance(value, dict) and set(value) - allowed:
            raise UsageError(f"{path}: [{section}] has unknown keys {sorted(set(value) - allowed)}")
    for need in ("model", "data", "card"):
        if need not in recipe:
            raise UsageError(f"{path}: a recipe needs a [{need}] section")
    if "name" not in recipe["model"] or "path" not in recipe["data"]:
        raise UsageError(f"{path}: [model] needs name and [data] needs path")
    if not isinstance(recipe["data"].get("equalize", False), bool):
        raise UsageError(f"{path}: [data] equalize must be true or false, got {recipe['data']['equalize']!r}")
    if "augment" in recipe:
        _check_augment(recipe["augment"], path)

    card_from_dict(recipe["card"], f"{path}: [card]")  # refused now, not at submit after the training
    stages = recipe.get("stage", [])
    if not isinstance(stages, list):
        raise UsageError(f"{path}: stages are [[stage]] tables (an array), not one [stage]")
    for i, st in enumerate(stages):
        extra = set(st) - {"id", "name", "config", "train"}
        if extra or "id" not in st or "name" not in st:
            raise UsageError(f"{path}: [[stage]] {i + 1} needs id and name (and may have config, train); "
                             f"unknown keys {sorted(extra)}" if extra else
                             f"{path}: [[stage]] {i + 1} needs id and name (and may have config, train)")
        if set(st.get("train", {})) - TRAIN_KEYS:
            raise UsageError(f"{path}: [[stage]] {st['id']} train has unknown keys "
                             f"{sorted(set(st['train']) - TRAIN_KEYS)}")
    return recipe


def _check_augment(aug: dict, path: Path) -> None:
    n = aug.get("n_per_class")
    if not isinstance(aug.get("task"), str) or not isinstance(n, int) or isinstance(n, bool) or n < 2:
        raise UsageError(f"{path}: [augment] needs task = \"A vs B\" and n_per_class = an integer >= 2 (the real and "
                         "synthetic images per class)")
    parse_task(aug["task"])


def augment_requests(aug: dict) -> bytes:
    """The ``sample --labels-csv`` file of ``[augment]``: ``n_per_class`` rows requesting each class of the task."""
    pos, neg = parse_task(aug["task"])
    n = int(aug["n_per_class"])
    rows = ["1,0"] * n + ["0,1"] * n
    return "\n".join([f"{pos},{neg}", *rows, ""]).encode()


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(x)}" for k, x in v.items()) + " }"
    raise UsageError(f"recipe value {v!r} cannot be written to TOML")


def _train_command(name: str, data: dict, out: Path, config_file: Path, train: dict, args,
                   final: bool = True) -> list[str]:
    t = ["train", name, "--data", str(data["path"]), "--out", str(out), "--config", str(config_file)]
    if data.get("split"):
        t += ["--split", data["split"]]
    if data.get("labels"):
        t += ["--labels", data["labels"]]
    if data.get("equalize"):
        t.append("--equalize")
    budget = {k: train.get(k) for k in sorted(TRAIN_KEYS)}
    budget["seed"] = train.get("seed", 0)
    if args.max_minutes is not None:  # a shorter try: the override replaces both clocks
        budget["max_minutes"], budget["cpu_minutes"] = args.max_minutes, None
    if args.steps is not None and final:
        # exactly the steps an entry's card records: the same weights on any machine, whatever its speed
        budget["steps"], budget["cpu_minutes"], budget["max_minutes"] = args.steps, None, None
    for k, v in budget.items():
        if isinstance(v, list):  # keep_cpu_minutes = [5, 15, 30]
            v = ",".join(f"{x:g}" for x in v) or None
        if v is not None:
            t += ["--" + k.replace("_", "-"), str(v)]
    if args.quiet:
        t.append("--quiet")
    return t


def _with_stage_folders(config: dict, folders: dict[str, Path]) -> dict:
    """``"{id}"`` string values replaced by the folder stage ``id`` trained into."""
    out = {}
    for k, v in config.items():
        if isinstance(v, str) and v.startswith("{") and v.endswith("}"):
            if v[1:-1] not in folders:
                raise UsageError(f"config {k} = {v!r} names no earlier [[stage]] (stages: {', '.join(folders) or 'none'})")
            v = str(folders[v[1:-1]])
        out[k] = v
    return out


def commands(recipe: dict, args) -> tuple[list[list[str]], dict[str, Path], dict[Path, dict]]:
    """The ``cxrbench`` argument lists the recipe runs, the files it writes first (config, card), and each
    config file's contents."""
    slug = args.recipe.stem
    run_dir, samples = args.runs / slug, args.samples_dir / slug
    model, data = recipe["model"], recipe["data"]
    train, sample = recipe.get("train", {}), recipe.get("sample", {})
    files = {"config": run_dir.parent / f"{slug}.config.toml", "card": run_dir.parent / f"{slug}.model.toml",
             "curve": run_dir.parent / f"{slug}.curve.json"}
    argvs, configs, folders = [], {}, {}
    for st in recipe.get("stage", []):
        out = args.runs / f"{slug}-{st['id']}"
        config_file = args.runs / f"{slug}-{st['id']}.config.toml"
        configs[config_file] = _with_stage_folders(st.get("config", {}), folders)
        argvs.append(_train_command(st["name"], data, out, config_file, st.get("train", {}), args, final=False))
        folders[st["id"]] = out
    configs[files["config"]] = _with_stage_folders(model.get("config", {}), folders)
    argvs.append(_train_command(model["name"], data, run_dir, files["config"], train, args))
    s = ["sample", str(run_dir), "--n", str(sample.get("n", 200)), "--seed", str(sample.get("seed", 0)),
         "--out", str(samples), "--batch-size", str(sample.get("batch_size", 64))]
    if sample.get("bit_depth"):
        s += ["--bit-depth", str(sample["bit_depth"])]
    if args.force:
        s.append("--overwrite")
    u = ["submit", "--samples", str(samples), "--card", str(files["card"]), "--entries", str(args.entries),
         "--protocol", recipe.get("submit", {}).get("protocol", DEFAULT_PROTOCOL)]
    if any("keep_cpu_minutes" in t for t in [train, *(st.get("train", {}) for st in recipe.get("stage", []))]):
        u += ["--learning-curve", str(files["curve"])]
    extra = []
    if "augment" in recipe:  # the block's own per-class samples (see the module docstring)
        aug, aug_dir = recipe["augment"], args.samples_dir / f"{slug}-augment"
        files["augment_requests"] = run_dir.parent / f"{slug}.augment-requests.csv"
        extra.append(["sample", str(run_dir), "--labels-csv", str(files["augment_requests"]), "--seed",
                      str(aug.get("seed", 0)), "--out", str(aug_dir), "--batch-size", str(aug.get("batch_size", 64)),
                      *(["--overwrite"] if args.force else [])])
        u += ["--augment", aug["task"], "--augment-samples", str(aug_dir), "--augment-n-per-class",
              str(aug["n_per_class"])]
    r = _reconstruct_command(recipe, run_dir, args)
    if r is not None:
        extra.append(r)
        u += ["--reconstructions", r[r.index("--out") + 1]]
    if args.force:
        u.append("--force")
    if args.quiet:
        u.append("--quiet")
    return [*argvs, s, *extra, u], files, configs


def _reconstruct_command(recipe: dict, run_dir: Path, args) -> list[str] | None:
    """``[reconstruct]``: the trained model's reconstructions of real images it never saw (the reconstruction
    block's input), into ``<samples-dir>/<recipe>-reconstructions``; None without the table."""
    rec = recipe.get("reconstruct")
    if rec is None:
        return None
    out = args.samples_dir / f"{args.recipe.stem}-reconstructions"
    r = ["sample", str(run_dir), "--reconstruct", str(rec.get("path", recipe["data"]["path"])),
         "--reconstruct-split", str(rec.get("split", "cxr128-heldout")), "--out", str(out),
         "--seed", str(rec.get("seed", 0)), "--batch-size", str(rec.get("batch_size", 64))]
    return r + (["--overwrite"] if args.force else [])


def training_cost(run_dirs: list[Path]) -> dict:
    """The card's ``[training]``: steps, images, CPU and wall minutes summed over the stages; the parameters
    and threads of the last (the generator that samples)."""

    states = [json.loads((d / "train_state.json").read_text()) for d in run_dirs]
    return {
        "steps": sum(int(s["step"]) for s in states),
        "images_seen": sum(int(s.get("images_seen", 0)) for s in states),
        "cpu_minutes": round(sum(float(s.get("cpu_s", s["elapsed_s"])) for s in states) / 60, 2),
        "wall_minutes": round(sum(float(s["elapsed_s"]) for s in states) / 60, 2),
        **({"parameters": int(states[-1]["parameters"])} if "parameters" in states[-1] else {}),
        **({"threads": int(states[-1]["threads"])} if "threads" in states[-1] else {}),
    }


def snapshot_minutes(folder: Path) -> float:
    return float(folder.name[len("cpu-"):-len("min")])


def learning_curve_block(recipe: dict, train_outs: list[Path], args) -> dict | None:
    """Sample and evaluate every kept model of the recipe's training runs; ``None`` when none was kept. The
    samples go to ``<samples-dir>/curves/<run>/cpu-<M>min`` and each point records them (location relative to
    the entries folder, sha256), so that ``verify`` recomputes the point.

    A point's CPU minutes are the whole recipe's: the kept model's own clock plus every earlier stage's."""
    # why: the engine (scipy.stats, sklearn: about 2 s of CPU) loads when the command runs, not for --help
    from ..engine.evaluate import evaluate

    sample, curve = recipe.get("sample", {}), recipe.get("curve", {})
    protocol = recipe.get("submit", {}).get("protocol", DEFAULT_PROTOCOL)
    metrics = curve.get("metrics") or [PROTOCOLS.get(protocol).headline]
    n, seed = int(curve.get("n", sample.get("n", 200))), int(curve.get("seed", sample.get("seed", 0)))
    points, offset = [], 0.0
    for out in train_outs:
        for snap in sorted(out.glob("cpu-*min"), key=snapshot_minutes):
            state = json.loads((snap / "train_state.json").read_text())
            # beside the entry's own samples, so that the entry can record them and verify recompute the point
            folder = args.samples_dir / "curves" / out.name / snap.name
            argv = ["sample", str(snap), "--n", str(n), "--seed", str(seed), "--out", str(folder), "--overwrite"]
            print("cxrbench " + shlex.join(argv), file=sys.stderr)
            if args.cli_main(argv):
                raise UsageError(f"{snap}: sampling the kept model failed; fix it and run again")
            result = evaluate(str(folder), protocol=protocol, progress=not args.quiet)
            for metric in metrics:
                m = result["metrics"][metric]
                points.append({"cpu_minutes": round(offset + float(state["cpu_s"]) / 60, 2), "n_samples": n,
                               "metric": metric, "value": m["value"], "ci": m.get("ci"),
                               "steps": int(state["step"]), "images_seen": int(state["images_seen"]),
                               "samples": {"location": Path(os.path.relpath(folder, args.entries)).as_posix(),
                                           "sha256": result["samples"]["sha256"]}})
        offset += float(json.loads((out / "train_state.json").read_text())["cpu_s"]) / 60
    return {"checkpoints": points} if points else None


def run(args) -> int:
    recipe = load_recipe(args.recipe)
    steps, files, configs = commands(recipe, args)
    if args.train_only:
        steps = [a for a in steps if a[0] == "train"]
    for argv in steps:
        print("cxrbench " + shlex.join(argv), file=sys.stderr)
    if args.dry_run:
        return 0
    for path, values in configs.items():
        atomic_write_bytes(path, "".join(f"{k} = {_toml_value(v)}\n" for k, v in values.items()).encode())
    if "augment_requests" in files:
        atomic_write_bytes(files["augment_requests"], augment_requests(recipe["augment"]))
    train_outs = [Path(a[a.index("--out") + 1]) for a in steps if a[0] == "train"]
    curve = None
    for argv in steps:
        # the card (with the training cost) is written once every stage has trained; [augment]'s and
        # [reconstruct]'s samples are later
        if argv[0] == "sample" and "--labels-csv" not in argv and "--reconstruct" not in argv:
            card = {**recipe["card"], "training": training_cost(train_outs)}
            atomic_write_bytes(files["card"], "".join(f"{k} = {_toml_value(v)}\n" for k, v in card.items()).encode())
            curve = learning_curve_block(recipe, train_outs, args)
            if curve is not None:
                atomic_write_bytes(files["curve"], json.dumps(curve, indent=2).encode())
        if argv[0] == "submit" and "--learning-curve" in argv and curve is None:  # no mark was reached
            i = argv.index("--learning-curve")
            argv = argv[:i] + argv[i + 2:]
        rc = args.cli_main(argv)  # the CLI hands itself in: a command never imports the CLI above it
        if rc:
            raise UsageError(f"{args.recipe}: `cxrbench {argv[0]}` failed (exit {rc}); fix it and run again: "
                             "training resumes from its checkpoint")
    return 0
