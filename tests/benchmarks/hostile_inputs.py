"""Hostile inputs through the real command line: what a user gets for each one, as a table.

    OMP_NUM_THREADS=1 python tests/benchmarks/hostile_inputs.py            # every case, ~5 minutes on one core
    OMP_NUM_THREADS=1 python tests/benchmarks/hostile_inputs.py -k npz dicom   # cases whose name holds a word

Each case builds its inputs in a fresh temporary folder from small synthetic images the script makes itself
(``data.synthetic.synthetic_cxr``, 32 px), runs ``python -m cxrbench ...`` in a subprocess (one thread, the
feature cache inside the temporary folder, a time limit per case) and records the exit code, whether stderr
holds a Python traceback, the last line of stderr, and whether anything partial was left where the output
should be. Each case states the outcome a user should get (the documented behaviour: exit 2 for a usage
error, a one-line message naming the file, a warning where the run can go on) and is marked as expected or
not. The table goes to stdout and to ``tests/benchmarks/results/hostile_inputs.md`` (and ``.json``); the
script exits 1 when any case is not as expected, so a regression in error handling shows up here.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from cxrbench.data.synthetic import synthetic_cxr  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
TIMEOUT_S = 90
N_IMAGES = 12
# the cheapest real evaluation: seeded random weights, one small extractor, one metric, few replicates
FAST = ["--extractors", "random-conv", "--weights", "random", "--metrics", "fid", "--n-bootstrap", "10",
        "--quiet", "--num-workers", "0"]
TRACEBACK = re.compile(r"^Traceback \(most recent call last\):", re.MULTILINE)


# ---------------------------------------------------------------- building inputs


def png_bytes(a: np.ndarray) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def write_pngs(folder: Path, n: int = N_IMAGES, seed: int = 0, size: int = 32) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    x = synthetic_cxr(n, size, seed=seed).numpy()[:, 0]
    for i, a in enumerate(x):
        (folder / f"{i:03d}.png").write_bytes(png_bytes((a * 255).round().astype(np.uint8)))
    return folder


def images(n: int = N_IMAGES, seed: int = 0, size: int = 32) -> np.ndarray:
    return synthetic_cxr(n, size, seed=seed).numpy()[:, 0]


def png_header_only(w: int, h: int) -> bytes:
    """A PNG whose header claims ``w`` x ``h`` pixels, with one tiny IDAT: a decompression bomb's shape for free."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def write_dicom(path: Path, a: np.ndarray, *, monochrome1: bool = False) -> None:
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[str(path)])
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientID = "DX", "hostile"
    px = ((1.0 - a) if monochrome1 else a) * 4095
    ds.Rows, ds.Columns = a.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME1" if monochrome1 else "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = px.round().astype(np.uint16).tobytes()
    ds.save_as(str(path), enforce_file_format=True)


class _Evil:
    """Unpickling this runs ``touch MARKER``: what a malicious weights file or array would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


# ---------------------------------------------------------------- running one case


@dataclass
class Run:
    argv: list[str]
    rc: int | None
    stdout: str
    stderr: str
    seconds: float

    @property
    def traceback(self) -> bool:
        return bool(TRACEBACK.search(self.stderr))

    @property
    def message(self) -> str:
        """The line a user reads: the last non-empty stderr line that is not a usage synopsis."""
        lines = [ln.strip() for ln in self.stderr.splitlines() if ln.strip()]
        for ln in reversed(lines):
            if "error" in ln.lower() or "warning" in ln.lower():
                return ln
        return lines[-1] if lines else ""

    @property
    def warnings(self) -> str:
        """Lines of either stream that warn or list skipped files (the result table prints some)."""
        lines = (self.stderr + "\n" + self.stdout).splitlines()
        return "\n".join(ln for ln in lines if re.search(r"warn|skip|unreadable|not comparable", ln, re.IGNORECASE))


class Ctx:
    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.cache = tmp / "cache"
        self.env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", CXRBENCH_CACHE=str(self.cache),
                        PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        self.env.pop("CXRBENCH_WEIGHTS", None)

    def p(self, *parts) -> Path:
        return self.tmp.joinpath(*parts)

    def samples(self, name: str = "samples", **kw) -> Path:
        return write_pngs(self.p(name), **kw)

    def reference(self) -> Path:
        return write_pngs(self.p("reference"), seed=1)

    def evaluate(self, samples, *extra) -> list[str]:
        return ["evaluate", "--samples", str(samples), "--reference", str(self.reference()), *FAST, *extra]

    def popen(self, args: list[str], env=None):
        return subprocess.Popen([sys.executable, "-m", "cxrbench", *args], cwd=self.tmp, env=env or self.env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, errors="replace")

    def run(self, args: list[str], timeout: float = TIMEOUT_S, env=None) -> Run:
        t0 = time.monotonic()
        proc = self.popen(args, env)
        try:
            out, err = proc.communicate(timeout=timeout)
            rc = proc.returncode
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            rc, err = None, err + f"\n(timed out after {timeout:.0f} s)"
        return Run(args, rc, out, err, time.monotonic() - t0)


@dataclass
class Outcome:
    run: Run
    expected: str  # what a user should get, in words
    ok: bool
    why: str = ""  # what differed, when not ok
    partial: list[str] = field(default_factory=list)  # leftovers where the output should be


def leftovers(out: Path, run: Run) -> list[str]:
    """What sits where ``out`` should be: temporary siblings always count; ``out`` itself after a failure."""
    parent = out.parent
    if not parent.is_dir():
        return []
    found = []
    for f in parent.iterdir():
        if f == out:
            if run.rc != 0:
                found.append(f.name)
        elif f.name.startswith((out.name + ".", "." + out.name, "tmp")) or f.suffix in (".tmp", ".part"):
            found.append(f.name)
    return sorted(found)


def expect(run: Run, *, rc, names=(), warn=(), out: Path | None = None, stdout=(), extra=None,
           expected: str, table: bool = False) -> Outcome:
    """Check ``run`` against the fixed behaviour: exit code in ``rc``, no traceback, a message naming every
    string of ``names`` (case-insensitive; with ``table`` the names may be in the stdout table of a failed
    check instead), a warning holding each of ``warn``, nothing partial at ``out``."""
    rcs = (rc,) if isinstance(rc, int) else tuple(rc)
    why = []
    if run.rc not in rcs:
        why.append(f"exit {run.rc}, expected {'/'.join(map(str, rcs))}")
    if run.traceback:
        why.append("traceback")
    msg = (run.stderr + (run.stdout if table else "")).lower()
    for s in names:
        if s.lower() not in msg:
            why.append(f"message does not name {s!r}")
    for s in warn:
        if s.lower() not in run.warnings.lower():
            why.append(f"no warning naming {s!r}")
    for s in stdout:
        if s not in run.stdout:
            why.append(f"stdout lacks {s!r}")
    partial = leftovers(out, run) if out is not None else []
    if partial:
        why.append(f"left {', '.join(partial)}")
    if extra:
        why.extend(w for w in extra if w)
    return Outcome(run, expected, not why, "; ".join(why), partial)


USAGE = "exit 2, one line"
DATA = "exit 1/2, one line naming the file"
OK = "exit 0"


# ---------------------------------------------------------------- the cases
# Each takes a Ctx and returns an Outcome; CASES lists them in table order.

CASES = []


def case(fn):
    CASES.append(fn)
    return fn


def bad_file_in_folder(ctx: Ctx, name: str, data: bytes, *extra):
    s = ctx.samples()
    (s / name).write_bytes(data)
    return ctx.run(ctx.evaluate(s, *extra)), name


@case
def empty_folder(ctx):
    ctx.p("empty").mkdir()
    r = ctx.run(ctx.evaluate(ctx.p("empty")))
    return expect(r, rc=(1, 2), names=["empty", "no images"], expected=DATA)


@case
def missing_folder(ctx):
    r = ctx.run(ctx.evaluate(ctx.p("nowhere")))
    return expect(r, rc=2, names=["nowhere"], expected=USAGE + " naming the path")


@case
def samples_is_a_text_file(ctx):
    ctx.p("notes.txt").write_text("hello\n")
    r = ctx.run(ctx.evaluate(ctx.p("notes.txt")))
    return expect(r, rc=(1, 2), names=["notes.txt"], expected=DATA)


@case
def zero_byte_png(ctx):
    r, name = bad_file_in_folder(ctx, "empty.png", b"")
    return expect(r, rc=(1, 2), names=[name, "--skip-bad"], expected=DATA + " and --skip-bad")


@case
def zero_byte_png_skip_bad(ctx):
    out = ctx.p("res.json")
    r, name = bad_file_in_folder(ctx, "empty.png", b"", "--skip-bad", "--out", str(out))
    n = json.loads(out.read_text())["samples"]["n_used"] if out.is_file() else None
    return expect(r, rc=0, warn=[name], extra=[n != N_IMAGES and f"n_used {n}"],
                  expected="exit 0, warning naming it, 12 used")


@case
def truncated_png(ctx):
    full = png_bytes((images(1, seed=5)[0] * 255).astype(np.uint8))
    r, name = bad_file_in_folder(ctx, "cut.png", full[: len(full) // 2])
    return expect(r, rc=(1, 2), names=[name], expected=DATA)


@case
def text_file_named_png(ctx):
    r, name = bad_file_in_folder(ctx, "readme.png", b"this is not an image\n" * 10)
    return expect(r, rc=(1, 2), names=[name], expected=DATA)


@case
def pixel_bomb_header(ctx):
    r, name = bad_file_in_folder(ctx, "bomb.png", png_header_only(50_000, 50_000))
    return expect(r, rc=(1, 2), names=[name, "large"], expected=DATA + " (too large)")


@case
def huge_image_8000px(ctx):
    from PIL import Image

    s = ctx.samples()
    Image.new("L", (8000, 8000), 128).save(s / "huge.png")  # a flat 64 Mpx PNG: ~60 kB on disk
    r = ctx.run(ctx.evaluate(s))
    return expect(r, rc=0, expected=OK + " (downsampled like any image)")


@case
def png_16bit(ctx):
    from PIL import Image

    s = ctx.p("samples")
    s.mkdir()
    for i, a in enumerate(images()):
        Image.fromarray((a * 65535).round().astype(np.uint16)).save(s / f"{i:03d}.png")
    r = ctx.run(ctx.evaluate(s))
    return expect(r, rc=0, expected=OK)


@case
def rgba_png(ctx):
    from PIL import Image

    s = ctx.p("samples")
    s.mkdir()
    for i, a in enumerate(images()):
        g = (a * 255).round().astype(np.uint8)
        Image.fromarray(np.stack([g, g, g, np.full_like(g, 7)], -1), "RGBA").save(s / f"{i:03d}.png")
    r = ctx.run(ctx.evaluate(s))
    return expect(r, rc=0, expected=OK + " (alpha ignored)")


@case
def one_pixel_image(ctx):
    r, name = bad_file_in_folder(ctx, "dot.png", png_bytes(np.full((1, 1), 128, np.uint8)))
    # refused (exit 1/2 naming it) or evaluated with a warning naming it; never silently accepted
    named = name in r.stderr + r.stdout
    return expect(r, rc=(0, 1, 2), extra=[not named and f"no message names {name}"],
                  expected="one line naming it (refused or warned)")


def npy_case(ctx, arr, names, name="gen.npy"):
    p = ctx.p(name)
    if name.endswith(".npz"):
        np.savez(p, **arr)
    else:
        np.save(p, arr)
    return expect(ctx.run(ctx.evaluate(p)), rc=(1, 2), names=[name, *names], expected=DATA)


@case
def npy_nan_inf(ctx):
    a = images()
    a[3, 5, 5], a[4, 0, 0] = np.nan, np.inf
    return npy_case(ctx, a, ["nan", "inf"])


@case
def npy_out_of_range(ctx):
    return npy_case(ctx, images() * 2 - 1, ["[0, 1]"])  # a generator's [-1, 1] output


@case
def npz_two_keys_no_images(ctx):
    u16 = (images() * 65535).astype(np.uint16)
    return npy_case(ctx, {"x": u16, "y": u16}, ["images"], name="gen.npz")


@case
def npz_uint16_one_key(ctx):
    p = ctx.p("gen.npz")
    np.savez(p, samples=(images() * 65535).astype(np.uint16))
    return expect(ctx.run(ctx.evaluate(p)), rc=0, expected=OK + " (its only array)")


@case
def npy_object_pickle(ctx):
    marker = ctx.p("PWNED")
    p = ctx.p("gen.npy")
    np.save(p, np.array([_Evil(marker)], dtype=object), allow_pickle=True)
    r = ctx.run(ctx.evaluate(p))
    return expect(r, rc=(1, 2), names=["gen.npy"], extra=[marker.exists() and "the pickle ran"],
                  expected=DATA + ", pickle not run")


@case
def symlink_loop_file(ctx):
    s = ctx.samples()
    os.symlink("loop.png", s / "loop.png")
    r = ctx.run(ctx.evaluate(s))
    return expect(r, rc=(1, 2), names=["loop.png"], expected=DATA)


@case
def symlink_dir_cycle(ctx):
    s = ctx.samples()
    os.symlink("..", s / "up")
    os.symlink(".", s / "self")
    r = ctx.run(ctx.evaluate(s, "--out", str(ctx.p("res.json"))))
    n = json.loads(ctx.p("res.json").read_text())["samples"]["n"] if r.rc == 0 else None
    return expect(r, rc=0, extra=[r.rc == 0 and n != N_IMAGES and f"n {n}"], expected=OK + ", links not followed")


@case
def fifo_named_png(ctx):
    s = ctx.samples()
    os.mkfifo(s / "pipe.png")  # reading it would block forever
    r = ctx.run(ctx.evaluate(s), timeout=20)
    return expect(r, rc=(1, 2), names=["pipe.png"], expected=DATA + ", no hang")


@case
def odd_file_names(ctx):
    s = ctx.samples()
    a = images(3, seed=9)
    for name, x in zip(["with space.png", "r\u00f6ntgen-\u80f8\u90e8.png", "-leading-dash.png"], a):
        (s / name).write_bytes(png_bytes((x * 255).astype(np.uint8)))
    r = ctx.run(ctx.evaluate(s))
    return expect(r, rc=0, stdout=[f"({N_IMAGES + 3} images)"], expected=OK + ", all 15 read")


@case
def dicom_monochrome1(ctx):
    s = ctx.p("samples")
    s.mkdir()
    for i, a in enumerate(images()):
        write_dicom(s / f"{i:03d}.dcm", a, monochrome1=True)
    r = ctx.run(ctx.evaluate(s))
    return expect(r, rc=0, expected=OK + " (inverted)")


@case
def dicom_without_extension(ctx):
    s = ctx.samples()
    write_dicom(s / "IM0001", images(1, seed=8)[0])
    r = ctx.run(ctx.evaluate(s))
    return expect(r, rc=0, stdout=[f"({N_IMAGES + 1} images)"], expected=OK + ", the file read (13 images)")


def manifest_case(ctx, text: str, names, expected=DATA):
    s = ctx.samples()
    (s / "manifest.csv").write_text(text)
    return expect(ctx.run(ctx.evaluate(s)), rc=(1, 2), names=["manifest.csv", *names], expected=expected)


def rows(fmt: str) -> str:
    return "".join(fmt.format(i=i) for i in range(N_IMAGES))


@case
def manifest_not_csv(ctx):
    # no usable path column: refused, or every image warned about as unlabelled; never silently ignored
    s = ctx.samples()
    (s / "manifest.csv").write_text('"unterminated\n\x00\x01garbage,"\n')
    r = ctx.run(ctx.evaluate(s))
    named = "manifest.csv" in r.stderr + r.stdout
    return expect(r, rc=(0, 1, 2), extra=[not named and "no line names manifest.csv"],
                  expected="a line naming manifest.csv (error or warning)")


@case
def manifest_unknown_label(ctx):
    return manifest_case(ctx, "path,Efusion\n" + rows("{i:03d}.png,1\n"), ["Efusion"],
                         expected=DATA + " and the column")


@case
def manifest_path_traversal(ctx):
    return manifest_case(ctx, "path,Effusion\n../../etc/passwd,1\n" + rows("{i:03d}.png,0\n"), ["../../etc/passwd"])


@case
def manifest_bad_label_value(ctx):
    return manifest_case(ctx, "path,Effusion\n" + rows("{i:03d}.png,yes\n"), ["Effusion"])


def first_run(ctx, *extra) -> tuple[Run, dict | None]:
    out = ctx.p("first.json")
    r = ctx.run(ctx.evaluate(ctx.samples(), "--out", str(out), *extra))
    return r, (json.loads(out.read_text()) if out.is_file() else None)


def fid(res: dict | None):
    return None if res is None else res["metrics"]["fid_random-conv"]["value"]


@case
def corrupt_feature_cache(ctx):
    r0, res0 = first_run(ctx)
    entries = sorted((ctx.cache / "features").rglob("*.npz"))
    for i, p in enumerate(entries):  # one truncated, the others overwritten with junk
        p.write_bytes(p.read_bytes()[:40] if i == 0 else b"junk" * 10)
    out = ctx.p("second.json")
    r = ctx.run(ctx.evaluate(ctx.p("samples"), "--out", str(out)))
    res = json.loads(out.read_text()) if out.is_file() else None
    extra = [r0.rc != 0 and "first run failed", not entries and "no cache entries written",
             res is not None and res["cache"]["corrupt_entries_recomputed"] != len(entries)
             and f"recomputed {res['cache']['corrupt_entries_recomputed']} of {len(entries)}",
             res is not None and fid(res) != fid(res0) and "different FID"]
    return expect(r, rc=0, extra=extra, expected=OK + ", entries recomputed, same FID")


@case
def unwritable_cache(ctx):
    # a cache path under a regular file cannot be created, even by root (chmod does not stop root)
    ctx.p("afile").write_text("x")
    env = dict(ctx.env, CXRBENCH_CACHE=str(ctx.p("afile", "cache")))
    r = ctx.run(ctx.evaluate(ctx.samples()), env=env)
    return expect(r, rc=0, warn=["cache"], expected=OK + ", one warning about the cache")


@case
def out_is_a_directory(ctx):
    out = ctx.p("outdir")
    out.mkdir()
    r = ctx.run(ctx.evaluate(ctx.samples(), "--out", str(out)))
    return expect(r, rc=(1, 2), names=["outdir"], expected=DATA)


@case
def out_under_a_file(ctx):
    ctx.p("afile").write_text("x")
    out = ctx.p("afile", "result.json")
    r = ctx.run(ctx.evaluate(ctx.samples(), "--out", str(out)))
    extra = [ctx.p("afile").read_text() != "x" and "afile changed"]
    return expect(r, rc=(1, 2), names=["result.json"], extra=extra, expected=DATA + ", nothing written")


@case
def out_in_missing_dir(ctx):
    out = ctx.p("new", "deeper", "result.json")
    r = ctx.run(ctx.evaluate(ctx.samples(), "--out", str(out)))
    # either made (exit 0, the file complete) or refused in one line with nothing left behind
    made = r.rc == 0 and out.is_file() and json.loads(out.read_text()).get("metrics")
    refused = r.rc in (1, 2) and "result.json" in r.stderr and not out.exists()
    return expect(r, rc=(0, 1, 2), out=out, extra=[not (made or refused) and "neither written nor refused"],
                  expected="exit 0 with the file, or one line")


@case
def concurrent_runs_one_cache(ctx):
    args = [ctx.evaluate(ctx.samples(), "--out", str(ctx.p(f"r{i}.json"))) for i in (0, 1)]
    t0 = time.monotonic()
    procs = [ctx.popen(a) for a in args]
    outs = [p.communicate(timeout=TIMEOUT_S * 2) for p in procs]
    runs = [Run(a, p.returncode, o, e, time.monotonic() - t0) for a, p, (o, e) in zip(args, procs, outs)]
    res = [json.loads(ctx.p(f"r{i}.json").read_text()) if ctx.p(f"r{i}.json").is_file() else None for i in (0, 1)]
    bad = [r for r in runs if r.rc != 0 or r.traceback]
    extra = [bad and f"second run: exit {runs[1].rc}", fid(res[0]) != fid(res[1]) and "different FID"]
    return expect(bad[0] if bad else runs[0], rc=0, extra=extra, expected="both exit 0, same FID")


@case
def kill9_then_rerun(ctx):
    s = write_pngs(ctx.p("samples"), n=160, seed=0, size=64)
    args = ctx.evaluate(s, "--chunk-size", "8", "--out", str(ctx.p("res.json")))
    proc = ctx.popen(args)
    feats, t0, killed = ctx.cache / "features", time.monotonic(), False
    while proc.poll() is None and time.monotonic() - t0 < TIMEOUT_S:
        if feats.is_dir() and sum(1 for _ in feats.rglob("*.npz")) >= 3:
            os.kill(proc.pid, signal.SIGKILL)
            killed = True
            break
        time.sleep(0.02)
    proc.communicate()
    done = sum(1 for _ in feats.rglob("*.npz")) if feats.is_dir() else 0
    r = ctx.run(args)
    res = json.loads(ctx.p("res.json").read_text()) if ctx.p("res.json").is_file() else None
    hits = res["cache"]["hits"] if res else None
    extra = [not killed and "finished before the kill", res and not hits and "no chunk reused",
             res and res["cache"]["corrupt_entries_recomputed"] and "corrupt entries after the kill"]
    return expect(r, rc=0, extra=extra, expected=f"rerun exit 0, reuses the chunks done ({done})")


def evil_weights(ctx, extractor: str) -> Outcome:
    import torch

    marker = ctx.p("PWNED")
    w = ctx.p("weights.pth")
    torch.save({"state_dict": _Evil(marker)}, w)
    args = ["evaluate", "--samples", str(ctx.samples()), "--reference", str(ctx.reference()), "--extractors",
            extractor, "--weights", str(w), "--metrics", "fid", "--n-bootstrap", "10", "--quiet", "--num-workers", "0"]
    r = ctx.run(args)
    return expect(r, rc=(1, 2), names=["weights.pth"], extra=[marker.exists() and "the pickle ran"],
                  expected="exit 1/2 naming the file, pickle not run")


@case
def malicious_weights_xrv(ctx):
    return evil_weights(ctx, "xrv")


@case
def malicious_weights_inception(ctx):
    return evil_weights(ctx, "inception")


CARD = """name = "hostile test"
authors = ["cxrbench"]
training_data = "synthetic"
resolution = 32
conditioning = "unconditional"
license = "MIT"
"""


_ENTRY: dict = {}  # one submitted entry (its folder) shared by the verify cases, copied into each


def make_entry(ctx) -> tuple[Run, Path | None]:
    """``samples/``, ``reference/`` and ``entries/NAME.json`` in ``ctx``'s folder, submitted once per script run."""
    if "dir" in _ENTRY:
        for name in ("samples", "reference", "entries", "model.toml"):
            src = _ENTRY["dir"] / name
            (shutil.copytree if src.is_dir() else shutil.copy2)(src, ctx.p(name))
        found = sorted(ctx.p("entries").glob("*.json"))
        return _ENTRY["run"], (found[0] if found else None)
    ctx.p("model.toml").write_text(CARD)
    s = ctx.samples()
    r = _ENTRY["run"] = ctx.run(["submit", "--samples", str(s), "--card", str(ctx.p("model.toml")), "--reference",
                 str(ctx.reference()), "--weights", "random", "--extractors", "random-conv", "--metrics", "fid",
                 "--n-bootstrap", "10", "--no-augment", "--entries", str(ctx.p("entries")), "--quiet",
                 "--num-workers", "0"])
    found = sorted(ctx.p("entries").glob("*.json")) if ctx.p("entries").is_dir() else []
    if found:
        _ENTRY["dir"] = Path(tempfile.mkdtemp(prefix="hostile-entry-"))
        for name in ("samples", "reference", "entries", "model.toml"):
            src = ctx.p(name)
            (shutil.copytree if src.is_dir() else shutil.copy2)(src, _ENTRY["dir"] / name)
    return r, (found[0] if found else None)


def verify_case(ctx, edit, names, rc=1, expected="exit 1 naming what differs", table=True) -> Outcome:
    r0, entry = make_entry(ctx)
    if entry is None:
        return expect(r0, rc=-1, expected=expected, extra=["submit failed"])
    d = json.loads(entry.read_text())
    edit(d, ctx)
    entry.write_text(json.dumps(d, indent=1))
    r = ctx.run(["verify", str(entry), "--reference", str(ctx.p("reference")), "--quiet", "--num-workers", "0"])
    return expect(r, rc=rc, names=names, expected=expected, table=table,
                  extra=[not table and "difference" in r.stderr and "compared instead of refused"])


@case
def verify_tampered_value(ctx):
    def edit(d, ctx):
        d["result"]["metrics"]["fid_random-conv"]["value"] *= 0.5

    return verify_case(ctx, edit, ["fid_random-conv"])


@case
def verify_sample_changed(ctx):
    def edit(d, ctx):
        (ctx.p("samples") / "000.png").write_bytes((ctx.p("samples") / "001.png").read_bytes())

    return verify_case(ctx, edit, ["000.png"])


@case
def verify_location_escapes(ctx):
    def edit(d, ctx):
        d["samples"]["location"] = "../../.."

    return verify_case(ctx, edit, ["location"], rc=(1, 2), expected="exit 1/2, refused in one line", table=False)


@case
def verify_file_path_traversal(ctx):
    def edit(d, ctx):
        d["samples"]["files"][0]["path"] = "../../etc/passwd"

    return verify_case(ctx, edit, ["../../etc/passwd"], rc=(1, 2), expected="exit 1/2, refused in one line",
                       table=False)


@case
def leaderboard_location_escapes(ctx):
    r0, entry = make_entry(ctx)
    if entry is None:
        return expect(r0, rc=-1, expected="", extra=["submit failed"])
    d = json.loads(entry.read_text())
    d["samples"]["location"] = "../../.."
    entry.write_text(json.dumps(d, indent=1))
    out = ctx.p("board")
    r = ctx.run(["leaderboard", "--entries", str(ctx.p("entries")), "--out", str(out)])
    return expect(r, rc=(1, 2), names=["location"], extra=[out.is_dir() and any(out.iterdir()) and "board written"],
                  expected="exit 1/2, refused in one line, no board")


@case
def report_script_injection(ctx):
    r0, res = first_run(ctx)
    if res is None:
        return expect(r0, rc=-1, expected="", extra=["evaluate failed"])
    evil = "<script>alert(1)</script>"
    res["samples"]["path"] = evil
    res["warnings"] = list(res.get("warnings", [])) + [evil + " [x](javascript:alert(1)) | col"]
    res["metrics"]["fid_random-conv"]["note"] = evil
    p = ctx.p("crafted.json")
    p.write_text(json.dumps(res))
    out = ctx.p("report")
    r = ctx.run(["report", str(p), "--out", str(out)])
    # HTML must not hold the tag; Markdown (rendered by GitHub and others) must not hold the tag or a live
    # link (an escaped \[x\](...) is text)
    live_link = re.compile(r"(?<!\\)\[[^\[\]]*(?<!\\)\]\(javascript:")
    leaks = [f.name for f in sorted(out.glob("report.*")) if "<script>alert" in f.read_text(errors="replace")
             or (f.suffix == ".md" and live_link.search(f.read_text(errors="replace")))] if out.is_dir() else []
    return expect(r, rc=0, extra=[leaks and f"unescaped in {', '.join(leaks)}"],
                  expected="exit 0, text escaped in .html and .md")


@case
def report_not_json(ctx):
    p = ctx.p("result.json")
    p.write_text("{not json")
    r = ctx.run(["report", str(p), "--out", str(ctx.p("report"))])
    return expect(r, rc=(1, 2), names=["result.json"], expected=DATA)


@case
def unknown_flag(ctx):
    return expect(ctx.run(ctx.evaluate(ctx.samples(), "--fast-please")), rc=2, names=["--fast-please"],
                  expected=USAGE)


@case
def bad_metric_setting(ctx):
    r = ctx.run(ctx.evaluate(ctx.samples(), "--metric-setting", "prdc_k=banana"))
    return expect(r, rc=2, names=["prdc_k"], expected=USAGE)


@case
def unknown_extractor(ctx):
    r = ctx.run(["evaluate", "--samples", str(ctx.samples()), "--reference", str(ctx.reference()), "--extractors",
                 "resnet9000", "--weights", "random", "--quiet"])
    return expect(r, rc=2, names=["resnet9000", "random-conv"], expected=USAGE + ", lists the names")


@case
def unknown_metric(ctx):
    r = ctx.run(["evaluate", "--samples", str(ctx.samples()), "--reference", str(ctx.reference()), "--extractors",
                 "random-conv", "--weights", "random", "--metrics", "fidd", "--quiet"])
    return expect(r, rc=2, names=["fidd"], expected=USAGE)


@case
def negative_n_bootstrap(ctx):
    return expect(ctx.run(ctx.evaluate(ctx.samples(), "--n-bootstrap", "-1")), rc=2, names=["--n-bootstrap"],
                  expected=USAGE)


@case
def unknown_reference_name(ctx):
    r = ctx.run(["evaluate", "--samples", str(ctx.samples()), "--reference", "nih-cxr15", *FAST])
    return expect(r, rc=2, names=["nih-cxr15"], expected=USAGE)


@case
def submit_old_out_flag(ctx):
    ctx.p("model.toml").write_text(CARD)
    r = ctx.run(["submit", "--samples", str(ctx.samples()), "--card", str(ctx.p("model.toml")), "--reference",
                 str(ctx.reference()), "--weights", "random", "--extractors", "random-conv", "--no-augment",
                 "--out", str(ctx.p("entries")), "--quiet"])
    return expect(r, rc=2, names=["--entries"], expected=USAGE + " naming --entries")


@case
def check_against_missing(ctx):
    r = ctx.run(["check", "--samples", str(ctx.samples()), "--against", str(ctx.p("baseline.json")), "--quiet"])
    return expect(r, rc=2, names=["baseline.json"], expected=USAGE + " naming the file")


@case
def submit_card_missing_fields(ctx):
    ctx.p("model.toml").write_text('name = "half a card"\n')
    r = ctx.run(["submit", "--samples", str(ctx.samples()), "--card", str(ctx.p("model.toml")), "--reference",
                 str(ctx.reference()), "--weights", "random", "--extractors", "random-conv", "--no-augment",
                 "--entries", str(ctx.p("entries")), "--quiet"])
    return expect(r, rc=(1, 2), names=["model.toml", "authors"], out=ctx.p("entries", "x"),
                  extra=[any(ctx.p("entries").glob("*.json")) and "an entry was written"],
                  expected="exit 1/2 naming the card and field, no entry")


# ---------------------------------------------------------------- table


def shorten(s: str, n: int = 90) -> str:
    s = " ".join(s.split())
    return s if len(s) <= n else s[: n - 1] + "\u2026"


def md_cell(s: str) -> str:
    return s.replace("|", "\\|").replace("<", "&lt;")


def display_command(argv: list[str], tmp: Path) -> str:
    text = " ".join(a if a and " " not in a else repr(a) for a in argv)
    text = text.replace(str(tmp) + "/", "").replace(str(tmp), ".")
    fast = " ".join(FAST)
    return "cxrbench " + text.replace(fast, "$FAST")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-k", nargs="*", default=[], help="run only cases whose name holds one of these words")
    ap.add_argument("--out", type=Path, default=None,
                    help="the Markdown table (default results/hostile_inputs.md; none written with -k)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folders (printed)")
    args = ap.parse_args()

    chosen = [c for c in CASES if not args.k or any(k in c.__name__ for k in args.k)]
    rows_, records = [], []
    t_all = time.monotonic()
    for fn in chosen:
        tmp = Path(tempfile.mkdtemp(prefix=f"hostile-{fn.__name__}-"))
        try:
            o = fn(Ctx(tmp))
        except Exception as e:  # a bug in the case itself, not in cxrbench: show it, count it as failed
            o = Outcome(Run([], None, "", f"{e.__class__.__name__}: {e}", 0.0), "", False, f"case error: {e}")
        finally:
            if args.keep:
                print(f"  kept {tmp}", file=sys.stderr)
            else:
                shutil.rmtree(tmp, ignore_errors=True)
        r = o.run
        cmd = display_command(r.argv, tmp)
        msg = r.message.replace(str(tmp) + "/", "").replace(str(tmp), ".")
        rec = {"case": fn.__name__, "command": cmd, "exit": r.rc, "traceback": r.traceback, "message": msg,
               "partial_output": o.partial, "expected": o.expected, "as_expected": o.ok, "why_not": o.why,
               "seconds": round(r.seconds, 1)}
        records.append(rec)
        mark = "yes" if o.ok else f"**no**: {o.why}"
        rows_.append(f"| {fn.__name__.replace('_', ' ')} | `{md_cell(shorten(cmd, 130))}` | "
                     f"{'timeout' if r.rc is None else r.rc} | "
                     f"{'**yes**' if r.traceback else 'no'} | {md_cell(shorten(msg))} | "
                     f"{md_cell(o.expected)} | {md_cell(mark)} |")
        print(f"{'ok  ' if o.ok else 'FAIL'} {fn.__name__:32s} exit {r.rc}  {r.seconds:5.1f} s  "
              f"{shorten(o.why or msg, 100)}", file=sys.stderr, flush=True)

    if "dir" in _ENTRY:
        shutil.rmtree(_ENTRY["dir"], ignore_errors=True)
    n_ok = sum(r["as_expected"] for r in records)
    head = [
        f"Hostile inputs through `python -m cxrbench`: {n_ok} of {len(records)} handled as expected "
        f"({time.monotonic() - t_all:.0f} s, one thread). `$FAST` = `{' '.join(FAST)}`; paths are relative to "
        "each case's temporary folder. Generated by `tests/benchmarks/hostile_inputs.py`.",
        "",
        "| case | command | exit | traceback? | message (shortened) | expected | as expected? |",
        "|---|---|---|---|---|---|---|",
    ]
    table = "\n".join(head + rows_) + "\n"
    print(table)
    out = args.out or (None if args.k else RESULTS / "hostile_inputs.md")
    if out is not None:  # a partial run (-k) does not replace the committed table
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(table)
        out.with_suffix(".json").write_text(json.dumps({"cases": records, "fast": FAST}, indent=1) + "\n")
    return 0 if n_ok == len(records) else 1


if __name__ == "__main__":
    sys.exit(main())
