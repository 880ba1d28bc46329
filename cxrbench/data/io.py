"""Decoding every supported input to the image contract: float32 ``(H, W)`` in ``[0, 1]``.

- PNG/JPEG/TIFF/BMP through Pillow. 8-bit is divided by 255, 16-bit by 65535 (the bit depth decides,
  never the image's own maximum, and nothing is clipped). RGB/RGBA become luminance (ITU-R 601 weights,
  computed in float so no 8-bit rounding); alpha is ignored.
- DICOM through pydicom: rescale slope/intercept applied, MONOCHROME1 inverted, then scaled by the range
  the stored bit depth allows (so two files with the same BitsStored map identically).
- ``.npy`` / ``.npz`` arrays of images (generators often emit arrays): uint8 / uint16 by bit depth,
  floats must already lie in ``[0, 1]``.
Anything else raises ``DataError`` naming the file and what to do.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import DataError, WeightsError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".dcm", ".dicom"}
ARRAY_SUFFIXES = {".npy", ".npz"}
#: refuse images above this many pixels (a 20k x 20k "image" would need 1.6 GB as float32)
MAX_PIXELS = 12_000 * 12_000
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float64)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_pinned(path: Path, expected: str, what: str, missing_fix: str, pinned_as: str | None = None) -> str:
    """The sha256 of a file cxrbench ships, refused in one line when it is missing (``missing_fix`` says what
    to do) or differs from the pinned ``expected``; ``what`` (``pinned_as`` in the second message) names it."""
    if not path.is_file():
        raise WeightsError(f"{path}: the {what} {'are' if what.endswith('features') else 'is'} missing; {missing_fix}")
    digest = sha256_file(path)
    if digest != expected:
        raise WeightsError(f"{path}: sha256 {digest[:16]}... is not the pinned {pinned_as or what} ({expected[:16]}...); "
                           "the file was altered: reinstall cxrbench or restore it from git")
    return digest


def _is_dicom(path: Path, head: bytes) -> bool:
    return path.suffix.lower() in (".dcm", ".dicom") or head[128:132] == b"DICM"


def load_image(path: str | os.PathLike, data: bytes | None = None) -> np.ndarray:
    """Decode one image file to float32 ``(H, W)`` in ``[0, 1]``; ``data`` avoids re-reading the file."""
    path = Path(path)
    if data is None:
        try:
            data = path.read_bytes()
        except OSError as e:
            raise DataError(f"{path}: cannot be read ({e.strerror or e})") from None
    if len(data) == 0:
        raise DataError(f"{path}: empty file (0 bytes); remove it or regenerate it")
    if _is_dicom(path, data[:132]):
        return _load_dicom(path, data)
    return _load_pillow(path, data)


def _load_pillow(path: Path, data: bytes) -> np.ndarray:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
            w, h = im.size
            if w * h > MAX_PIXELS:
                raise DataError(
                    f"{path}: {w}x{h} pixels is larger than cxrbench accepts ({MAX_PIXELS} pixels); "
                    "downsample it first (radiographs are evaluated at <= 1024 px)"
                )
            if getattr(im, "n_frames", 1) > 1:
                raise DataError(f"{path}: animated/multi-frame image ({im.n_frames} frames); save one frame per file")
            im.load()
    except DataError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        # Pillow refuses before we can read the size: say it is too large, not that it is unreadable
        raise DataError(f"{path}: image too large to decode safely ({e}); downsample it first") from None
    except UnidentifiedImageError as e:
        raise DataError(f"{path}: not a readable image ({e.__class__.__name__}); remove it or re-export it") from None
    except Exception as e:  # Pillow's format plugins raise many types on corrupt input (TypeError for a TIFF
        # without dimensions, struct.error, EOFError, ...): every one is a bad file, never a crash
        why = f"{e.__class__.__name__}: {e}"
        raise DataError(f"{path}: truncated or corrupt image ({why}); remove it or re-export it") from None

    mode = im.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        arr = np.asarray(im, dtype=np.float64) / 65535.0
    elif mode == "I":
        # Pillow opens 16-bit grayscale PNGs as 32-bit "I"; the file's bit depth decides the scale.
        a = np.asarray(im, dtype=np.float64)
        bits = 16 if im.format in ("PNG", "TIFF") else 32
        if a.min() < 0 or a.max() > 2**bits - 1:
            raise DataError(f"{path}: integer pixel values outside the {bits}-bit range; re-export as 8/16-bit PNG")
        arr = a / (2**bits - 1)
    elif mode == "F":
        arr = np.asarray(im, dtype=np.float64)
        if not np.isfinite(arr).all() or arr.min() < 0 or arr.max() > 1:
            raise DataError(f"{path}: float image must hold finite values in [0, 1]; rescale it first")
    elif mode in ("L", "1"):
        arr = np.asarray(im.convert("L"), dtype=np.float64) / 255.0
    elif mode == "LA":
        arr = np.asarray(im, dtype=np.float64)[..., 0] / 255.0
    elif mode in ("RGB", "RGBA", "P", "PA", "CMYK", "YCbCr", "LAB", "HSV", "RGBX"):
        rgb = np.asarray(im.convert("RGB"), dtype=np.float64)
        arr = rgb @ _LUMA / 255.0
    else:
        raise DataError(f"{path}: unsupported pixel mode {mode!r}; save it as 8- or 16-bit grayscale PNG")
    return np.ascontiguousarray(arr, dtype=np.float32)


def _load_dicom(path: Path, data: bytes) -> np.ndarray:
    import pydicom

    try:  # header values are parsed lazily, so a broken one fails on access: read them all in here
        ds = pydicom.dcmread(io.BytesIO(data))
        raw = ds.pixel_array
        bits = int(getattr(ds, "BitsStored", raw.dtype.itemsize * 8))
        signed = int(getattr(ds, "PixelRepresentation", 0)) == 1
        slope = float(getattr(ds, "RescaleSlope", 1) or 1)
        intercept = float(getattr(ds, "RescaleIntercept", 0) or 0)
        monochrome1 = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2")).upper() == "MONOCHROME1"
    except Exception as e:  # pydicom raises many types for broken files
        raise DataError(f"{path}: unreadable DICOM ({e.__class__.__name__}: {e}); re-export it") from None
    if raw.ndim != 2:
        raise DataError(f"{path}: DICOM with {raw.ndim} dimensions {raw.shape}; expected one 2-D grayscale frame")
    if not 1 <= bits <= 32 or not (math.isfinite(slope) and math.isfinite(intercept)):
        raise DataError(f"{path}: DICOM header has BitsStored={bits}, RescaleSlope={slope}, "
                        f"RescaleIntercept={intercept}; expected 1-32 bits and finite rescale values")
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    arr = raw.astype(np.float64) * slope + intercept
    lo, hi = sorted((lo * slope + intercept, hi * slope + intercept))
    arr = (arr - lo) / (hi - lo)
    if monochrome1:
        arr = 1.0 - arr
    if not np.isfinite(arr).all() or arr.min() < 0 or arr.max() > 1:
        # e.g. BitsStored smaller than the values actually stored: refuse rather than clip silently
        raise DataError(f"{path}: pixel values outside the range BitsStored={bits} allows; fix the DICOM header")
    return np.ascontiguousarray(arr, dtype=np.float32)


def array_to_images(arr: np.ndarray, source: str) -> np.ndarray:
    """An array of images (N,H,W), (N,1,H,W), (N,H,W,1), (N,3,H,W) or (N,H,W,3) -> float32 (N,H,W) in [0,1]."""
    a = np.asarray(arr)
    if a.ndim == 2:
        a = a[None]
    if a.ndim == 4:
        if a.shape[1] in (1, 3) and a.shape[-1] not in (1, 3):
            a = np.moveaxis(a, 1, -1)
        if a.shape[-1] == 3:
            a = a.astype(np.float64) @ _LUMA
        elif a.shape[-1] == 1:
            a = a[..., 0]
        else:
            raise DataError(f"{source}: array of shape {arr.shape}; expected (N,H,W), (N,1,H,W) or (N,H,W,3)")
    if a.ndim != 3 or a.shape[0] == 0:
        raise DataError(f"{source}: array of shape {arr.shape}; expected a non-empty (N,H,W) stack of images")
    dtype = np.asarray(arr).dtype
    if dtype == np.uint8:
        out = a.astype(np.float64) / 255.0
    elif dtype == np.uint16:
        out = a.astype(np.float64) / 65535.0
    elif np.issubdtype(dtype, np.floating):
        out = a.astype(np.float64)
        bad = ~np.isfinite(out)
        if bad.any():
            first = int(np.argwhere(bad.reshape(len(out), -1).any(1))[0, 0])
            raise DataError(f"{source}: NaN/Inf pixel values (first in image {first}); fix the generator's output")
        if out.min() < 0 or out.max() > 1:
            raise DataError(
                f"{source}: float images must lie in [0, 1] (found {out.min():.4g} to {out.max():.4g}); "
                "rescale them, e.g. (x + 1) / 2 for [-1, 1] outputs"
            )
    else:
        raise DataError(f"{source}: unsupported array dtype {dtype}; use uint8, uint16 or float in [0, 1]")
    return np.ascontiguousarray(out, dtype=np.float32)


def load_array_file(path: str | os.PathLike) -> np.ndarray:
    """Images from a ``.npy`` or ``.npz`` file (key ``images``, or its only array)."""
    path = Path(path)
    try:
        if path.suffix.lower() == ".npy":
            arr = np.load(path, allow_pickle=False)
        else:
            with np.load(path, allow_pickle=False) as z:
                keys = list(z.keys())
                if "images" in keys:
                    arr = z["images"]
                elif len(keys) == 1:
                    arr = z[keys[0]]
                else:
                    raise DataError(f"{path}: .npz with keys {keys}; store the images under the key 'images'")
    except DataError:
        raise
    except ValueError as e:
        raise DataError(f"{path}: cannot load array ({e}); save with numpy.save / numpy.savez, no pickles") from None
    except (OSError, EOFError) as e:
        raise DataError(f"{path}: truncated or unreadable array file ({e})") from None
    return array_to_images(arr, str(path))
