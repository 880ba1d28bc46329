"""Property-based fuzzing of everything that parses user files: the image decoder, image arrays, and the
labels.csv / manifest.csv alignment. The only allowed outcomes are the documented ones: a DataError, or a
correct value (a finite float32 image in [0, 1]; a table aligned row for row with the folder's images)."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cxrbench.data.imageset import _align_table, _read_csv
from cxrbench.data.io import array_to_images, load_image
from cxrbench.data.labels import LABELS
from cxrbench.errors import DataError

# CXRBENCH_FUZZ_EXAMPLES=5000 for a long hunt; the default keeps the suite fast
FUZZ = settings(max_examples=int(os.environ.get("CXRBENCH_FUZZ_EXAMPLES", 80)), deadline=None,
                suppress_health_check=[HealthCheck.too_slow])
SUFFIXES = [".png", ".jpg", ".tif", ".bmp", ".dcm"]


def _decodes_to_contract_or_refuses(name: str, data: bytes) -> None:
    try:
        img = load_image(name, data=data)
    except DataError as e:
        assert name in str(e)  # the message names the file
        return
    assert isinstance(img, np.ndarray) and img.dtype == np.float32 and img.ndim == 2 and img.size > 0
    assert np.isfinite(img).all() and img.min() >= 0 and img.max() <= 1


def _valid_files() -> dict[str, bytes]:
    from PIL import Image

    rng = np.random.default_rng(0)
    px8 = rng.integers(0, 256, (12, 10), dtype=np.uint8)
    out = {}
    for fmt, suffix in (("PNG", ".png"), ("JPEG", ".jpg"), ("TIFF", ".tif"), ("BMP", ".bmp")):
        buf = io.BytesIO()
        Image.fromarray(px8).save(buf, format=fmt)
        out[suffix] = buf.getvalue()
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 65536, (12, 10), dtype=np.uint16)).save(buf, format="PNG")
    out["16.png"] = buf.getvalue()
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)).save(buf, format="PNG")
    out["rgb.png"] = buf.getvalue()
    out[".dcm"] = _dicom_bytes(rng.integers(-2048, 2048, (8, 6)).astype(np.int16))
    return out


def _dicom_bytes(px: np.ndarray) -> bytes:
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    ds = FileDataset("x.dcm", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.Rows, ds.Columns = px.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME1"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 1
    ds.RescaleSlope, ds.RescaleIntercept = 1.0, -1024.0
    ds.PixelData = px.tobytes()
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


VALID = _valid_files()


def test_the_seed_files_are_valid():
    # the mutation test below starts from these; each must decode, or it would only test refusals
    for key, data in VALID.items():
        _decodes_to_contract_or_refuses(f"seed{key}", data)
        assert load_image(f"seed{key if key.startswith('.') else '.' + key.split('.')[-1]}", data=data).shape


@FUZZ
@given(data=st.binary(max_size=2048), suffix=st.sampled_from(SUFFIXES), magic=st.sampled_from(
    [b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"II*\x00", b"BM", b"\0" * 128 + b"DICM", b"GIF89a"]))
def test_random_bytes_decode_or_refuse(data, suffix, magic):
    _decodes_to_contract_or_refuses(f"fuzz{suffix}", magic + data)


@FUZZ
@given(key=st.sampled_from(sorted(VALID)), edits=st.lists(
    st.tuples(st.sampled_from(["flip", "cut", "insert", "zero"]), st.integers(0, 10**6), st.integers(0, 255)),
    min_size=1, max_size=6))
def test_mutated_valid_files_decode_or_refuse(key, edits):
    data = bytearray(VALID[key])
    for op, pos, val in edits:
        pos %= max(len(data), 1)
        if op == "flip" and data:
            data[pos] ^= val or 1
        elif op == "cut":
            del data[pos:]
        elif op == "insert":
            data[pos:pos] = bytes([val]) * (1 + val % 7)
        elif op == "zero":
            data[pos:pos + 8] = b"\0" * len(data[pos:pos + 8])
    suffix = key if key.startswith(".") else "." + key.split(".")[-1]
    _decodes_to_contract_or_refuses(f"mutated{suffix}", bytes(data))


@FUZZ
@given(
    dtype=st.sampled_from([np.uint8, np.uint16, np.float32, np.float64, np.int32, np.bool_]),
    shape=st.sampled_from([(4, 5), (2, 4, 5), (2, 1, 4, 5), (2, 4, 5, 1), (2, 3, 4, 5), (2, 4, 5, 3), (0, 4, 4),
                           (2, 4, 5, 2), (3,), (1, 1, 1, 1, 1)]),
    fill=st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=32), st.integers(-5, 70000)),
    spot=st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True, width=32)),
)
def test_arrays_convert_or_refuse(dtype, shape, fill, spot):
    with np.errstate(all="ignore"):
        a = np.full(shape, fill).astype(dtype) if not np.issubdtype(dtype, np.integer) or np.isfinite(fill) \
            else np.zeros(shape, dtype)
        if spot is not None and a.size and np.issubdtype(dtype, np.floating):
            a.reshape(-1)[a.size // 2] = spot
    try:
        out = array_to_images(a, "arr.npy")
    except DataError as e:
        assert "arr.npy" in str(e)
        return
    assert out.dtype == np.float32 and out.ndim == 3 and len(out) > 0
    assert np.isfinite(out).all() and out.min() >= 0 and out.max() <= 1
    if np.issubdtype(dtype, np.floating) and a.ndim == 3:
        np.testing.assert_array_equal(out, a.astype(np.float32))  # valid floats pass through unchanged


IDS = ["a.png", "b.png", "sub/c.png", "sub/d e.png"]
SPELLINGS = {"a.png": ["a.png", "./a.png", "sub/../a.png"], "b.png": ["b.png", ".//b.png"],
             "sub/c.png": ["sub/c.png", "sub\\c.png", "sub/./c.png"], "sub/d e.png": ["sub/d e.png"]}
ESCAPES = ["../x.png", "/etc/passwd", "sub/../../x.png", "..\\x.png", "C:/x.png", ".."]


@FUZZ
@given(
    rows=st.lists(st.tuples(
        st.one_of(st.sampled_from(IDS), st.sampled_from(ESCAPES), st.sampled_from(["zz.png", "sub/zz.png"])),
        st.integers(0, 2), st.sampled_from(["0", "1", "", "0.5", "-1", "yes", "nan", "2"])),
        max_size=6),
    label=st.sampled_from(["Atelectasis", "pleural effusion", "No Finding"]),
    source=st.one_of(st.none(), st.sampled_from(["ref/x.png", "../x.png", "/abs.png", "ok.png"])),
)
def test_labels_csv_aligns_correctly_or_refuses(tmp_path_factory, rows, label, source):
    path = tmp_path_factory.mktemp("csv") / "labels.csv"
    lines = ["path," + label + ("" if source is None else ",source")]
    for p, k, v in rows:
        spelled = SPELLINGS[p][k % len(SPELLINGS[p])] if p in SPELLINGS else p
        lines.append(f'"{spelled}",{v}' + ("" if source is None else f",{source}"))
    path.write_text("\n".join(lines) + "\n")
    try:
        df = _align_table(_read_csv(path), IDS, path, path.parent, notes := [])
    except DataError as e:
        assert str(path) in str(e)
        # refused for a reason that is really there: an escape, a bad label value, or a path listed twice
        bad_path = any(p in ESCAPES for p, _, _ in rows) or (source is not None and rows and source in
                                                            ("../x.png", "/abs.png"))
        bad_value = any(v in ("-1", "yes", "2") for _, _, v in rows)
        listed = [p for p, _, _ in rows]
        assert bad_path or bad_value or len(set(listed)) < len(listed)
        return
    assert not any(p in ESCAPES for p, _, _ in rows)
    canon = [lab for lab in LABELS if lab.lower() == label.lower()] or ["Effusion"]
    assert list(df["path"]) == IDS  # one row per image, in the folder's order
    given_rows = {p: v for p, _, v in rows}
    for i, image in enumerate(IDS):
        got = df[canon[0]].iloc[i]
        want = given_rows.get(image, "")
        if want in ("", "nan"):
            assert np.isnan(got)
        else:
            assert got == float(want)
    unmatched = {p for p in given_rows if p not in IDS}
    assert bool(unmatched) == any("name no image" in n for n in notes)


@FUZZ
@given(text=st.lists(st.sampled_from(list('ab,./\\"\n\r\t 01-;é\x00') + ["..", "path", "Atelectasis"]),
                    max_size=60).map("".join))
def test_arbitrary_csv_text_aligns_or_refuses(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("csv") / "manifest.csv"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        df = _align_table(_read_csv(path), IDS, path, path.parent)
    except DataError as e:
        assert str(path) in str(e)
        return
    assert list(df["path"]) == IDS


def test_the_property_can_fail(monkeypatch):
    # a decoder that silently returns out-of-range values must be caught by the property above
    import cxrbench.data.io as io_mod

    monkeypatch.setattr(io_mod, "_load_pillow", lambda path, data: np.full((2, 2), 2.0, np.float32))
    with pytest.raises(AssertionError):
        _decodes_to_contract_or_refuses("x.png", VALID[".png"])


def test_a_first_column_headed_like_a_label_is_read_as_the_path(tmp_path):
    # found by the property above: "Atelectasis,\tAtelectasis" made the path column and the label clash
    path = tmp_path / "labels.csv"
    path.write_text(f"Atelectasis,\tAtelectasis\n{IDS[1]},1\n")
    df = _align_table(_read_csv(path), IDS, path, tmp_path)
    assert list(df["path"]) == IDS
    assert df["Atelectasis"].iloc[1] == 1 and df["Atelectasis"].drop(index=1).isna().all()
