"""Model cards: the ``model.toml`` that goes with every leaderboard submission.

A card describes the model, never its numbers (cxrbench computes those itself). Example::

    name = "DDPM-64"
    authors = ["A. Author", "B. Author"]
    url = "https://github.com/example/ddpm-cxr"
    paper = "https://arxiv.org/abs/2006.11239"      # optional
    training_data = "NIH ChestX-ray14, train split (patient-wise)"
    resolution = 64                                  # or [height, width]
    conditioning = "unconditional"                   # unconditional | labels | text | image
    license = "Apache-2.0"
    kind = "model"                                   # optional: model | reference (a real-image row)
    [training]                                       # optional: the cost, as `cxrbench reproduce` fills it
    steps = 1200
    images_seen = 76800
    cpu_minutes = 15.0                               # or gpu_hours, for a model trained on a GPU
    wall_minutes = 22.4
    parameters = 3400000
    threads = 1

Cards are untrusted input (they are rendered into the leaderboard's HTML): every field is type-checked,
links must be http(s), and errors name the file and the field to fix.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..errors import DataError, UsageError

CONDITIONING = ("unconditional", "labels", "text", "image")
KINDS = ("model", "reference")  # a reference row (real images) gives the board its scale; it is not ranked as a model
TRAINING_KEYS = ("steps", "images_seen", "cpu_minutes", "gpu_hours", "wall_minutes", "parameters", "threads")
# A name becomes a file name (entries/<slug>.json) and an HTML anchor: keep it to a safe alphabet.
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._+()-]{0,79}$")
_URL_RE = re.compile(r"^https?://[^\s<>\"']+$")
_MAX_TEXT = 2000


@dataclass(frozen=True)
class ModelCard:
    name: str
    authors: tuple[str, ...]
    training_data: str
    resolution: tuple[int, int]  # (height, width)
    conditioning: str
    license: str
    url: str | None = None
    paper: str | None = None
    kind: str = "model"
    training: dict | None = None  # TRAINING_KEYS -> number

    @property
    def slug(self) -> str:
        return slugify(self.name)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["authors"] = list(self.authors)
        d["resolution"] = list(self.resolution)
        if d["kind"] == "model":
            del d["kind"]  # the default stays implicit, so older entries keep their bytes
        return {k: v for k, v in d.items() if v is not None}  # absent optional fields stay absent (as in TOML)


REQUIRED = ("name", "authors", "training_data", "resolution", "conditioning", "license")
LINKS = ("url", "paper")
OPTIONAL = (*LINKS, "kind", "training")


def slugify(name: str) -> str:
    """``"DDPM 64 (v2)"`` -> ``"ddpm-64-v2"``: the entry's file name and the card's anchor."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "model"


def _field_error(source: str, field: str, why: str) -> DataError:
    return DataError(f"{source}: field {field!r} {why}")


def _text(d: dict, field: str, source: str) -> str:
    """A one-line, non-empty string field, stripped."""
    v = d[field]
    if not isinstance(v, str) or not v.strip():
        raise _field_error(source, field, f"must be a non-empty string, got {v!r}")
    if len(v) > _MAX_TEXT or any(ord(c) < 32 for c in v):
        raise _field_error(source, field, f"must be one line of at most {_MAX_TEXT} characters")
    return v.strip()


def _check_keys(d: Any, source: str) -> None:
    """A table holding every required field and no unknown one."""
    if not isinstance(d, dict):
        raise DataError(f"{source}: a model card must be a TOML table of fields, got {type(d).__name__}")
    unknown = sorted(set(d) - set(REQUIRED) - set(OPTIONAL))
    if unknown:
        raise DataError(
            f"{source}: unknown field(s) {unknown}; a model card has {', '.join(REQUIRED + OPTIONAL)}"
        )
    missing = [f for f in REQUIRED if f not in d]
    if missing:
        raise DataError(f"{source}: missing required field(s) {missing}; see `cxrbench submit --help`")


def _authors(d: dict, source: str) -> tuple[str, ...]:
    authors = d["authors"]
    if isinstance(authors, str):
        raise _field_error(source, "authors", f'must be a list of strings, e.g. authors = ["{authors}"]')
    if not isinstance(authors, list) or not authors:
        raise _field_error(source, "authors", f"must be a non-empty list of strings, got {authors!r}")
    for a in authors:
        if not isinstance(a, str) or not a.strip() or len(a) > _MAX_TEXT or any(ord(c) < 32 for c in a):
            raise _field_error(source, "authors", f"holds {a!r}; every author must be a non-empty one-line string")
    return tuple(a.strip() for a in authors)


def _resolution(d: dict, source: str) -> tuple[int, int]:
    res = d["resolution"]
    if isinstance(res, int) and not isinstance(res, bool):
        res = [res, res]
    if (
        not isinstance(res, list)
        or len(res) != 2
        or not all(isinstance(r, int) and not isinstance(r, bool) and 0 < r <= 65536 for r in res)
    ):
        raise _field_error(source, "resolution",
                           f"must be a positive integer or [height, width], got {d['resolution']!r}")
    return (res[0], res[1])


def _training(d: dict, source: str) -> dict | None:
    """The optional training-cost table, its keys in TRAINING_KEYS order."""
    training = d.get("training")
    if training is None:
        return None
    if not isinstance(training, dict) or set(training) - set(TRAINING_KEYS):
        raise _field_error(source, "training",
                           f"must be a table with keys among {', '.join(TRAINING_KEYS)}, got {training!r}")
    for k, v in training.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < 1e15:
            raise _field_error(source, "training", f"{k} = {v!r} must be a non-negative number")
    return {k: training[k] for k in TRAINING_KEYS if k in training}


def _links(d: dict, source: str) -> dict[str, str | None]:
    """Each of LINKS: an http(s) link, or None where absent."""
    links: dict[str, str | None] = {}
    for field in LINKS:
        if field not in d:
            links[field] = None
            continue
        v = _text(d, field, source)
        if not _URL_RE.match(v):
            raise _field_error(source, field, f"= {v!r}: must be an http:// or https:// link")
        links[field] = v
    return links


def card_from_dict(d: Any, source: str = "model card") -> ModelCard:
    """Validate a parsed card; every error names ``source`` and the field."""
    _check_keys(d, source)
    name = _text(d, "name", source)
    if not _NAME_RE.match(name):
        raise _field_error(
            source, "name",
            f"= {name!r}: use 1-80 letters, digits, spaces and ._+()- , starting with a letter or digit",
        )
    authors = _authors(d, source)
    resolution = _resolution(d, source)
    conditioning = _text(d, "conditioning", source)
    if conditioning not in CONDITIONING:
        raise _field_error(source, "conditioning", f"= {conditioning!r}: choose one of {', '.join(CONDITIONING)}")
    kind = _text(d, "kind", source) if "kind" in d else "model"
    if kind not in KINDS:
        raise _field_error(source, "kind", f"= {kind!r}: choose one of {', '.join(KINDS)}")
    training = _training(d, source)
    links = _links(d, source)
    return ModelCard(
        name=name,
        authors=authors,
        training_data=_text(d, "training_data", source),
        resolution=resolution,
        conditioning=conditioning,
        license=_text(d, "license", source),
        url=links["url"],
        paper=links["paper"],
        kind=kind,
        training=training,
    )


def load_card(path: str | os.PathLike) -> ModelCard:
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise UsageError(f"{path}: no such model card; write a model.toml (see `cxrbench submit --help`)") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a folder; pass the model card file (model.toml)") from None
    try:
        d = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise DataError(f"{path}: not UTF-8 text; a model card is a TOML file") from None
    except tomllib.TOMLDecodeError as e:
        raise DataError(f"{path}: not valid TOML ({e})") from None
    return card_from_dict(d, str(path))
