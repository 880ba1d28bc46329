"""Image decoding: bit depths, colour, DICOM, arrays and bad files."""

import io

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image

from cxrbench.data.io import array_to_images, load_array_file, load_image
from cxrbench.errors import DataError


def _png(arr, path):
    Image.fromarray(arr).save(path)
    return path


@settings(max_examples=25, deadline=None)
@given(arrays(np.uint8, st.tuples(st.integers(1, 12), st.integers(1, 12))))
def test_png8_round_trip_exact(tmp_path_factory, arr):
    p = _png(arr, tmp_path_factory.mktemp("p") / "a.png")
    np.testing.assert_array_equal(load_image(p), (arr / 255.0).astype(np.float32))


@settings(max_examples=25, deadline=None)
@given(arrays(np.uint16, st.tuples(st.integers(1, 12), st.integers(1, 12))))
def test_png16_scaled_by_bit_depth_never_clipped(tmp_path_factory, arr):
    p = _png(arr, tmp_path_factory.mktemp("p") / "a.png")
    out = load_image(p)
    np.testing.assert_allclose(out, arr / 65535.0, rtol=0, atol=1e-7)
    assert out.max() <= 1.0


def test_png16_is_not_confused_with_8bit(tmp_path):
    arr = np.array([[0, 256, 32768, 65535]], dtype=np.uint16)
    out = load_image(_png(arr, tmp_path / "a.png"))
    np.testing.assert_allclose(out, [[0, 256 / 65535, 32768 / 65535, 1.0]], atol=1e-7)


def test_rgb_and_rgba_become_luminance(tmp_path):
    rgb = np.zeros((2, 2, 3), np.uint8)
    rgb[0, 0] = (255, 0, 0)
    rgb[0, 1] = (0, 255, 0)
    rgb[1, 0] = (0, 0, 255)
    rgb[1, 1] = (100, 100, 100)
    want = np.array([[0.299, 0.587], [0.114, 100 / 255]], np.float32)
    np.testing.assert_allclose(load_image(_png(rgb, tmp_path / "rgb.png")), want, atol=1e-6)
    rgba = np.concatenate([rgb, np.full((2, 2, 1), 7, np.uint8)], axis=2)
    np.testing.assert_allclose(load_image(_png(rgba, tmp_path / "rgba.png")), want, atol=1e-6)


def test_jpeg_grayscale(tmp_path):
    arr = np.full((16, 16), 128, np.uint8)
    Image.fromarray(arr).save(tmp_path / "a.jpg", quality=100)
    assert abs(float(load_image(tmp_path / "a.jpg").mean()) - 128 / 255) < 2 / 255


def _dicom(path, pixels, *, photometric="MONOCHROME2", slope=1.0, intercept=0.0, bits=12, signed=False):
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, bits, bits - 1
    ds.PixelRepresentation = int(signed)
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    ds.PixelData = pixels.astype(np.int16 if signed else np.uint16).tobytes()
    pydicom.dcmwrite(str(path), ds, enforce_file_format=True)
    return path


def test_dicom_rescale_and_monochrome1(tmp_path):
    px = np.array([[0, 1024], [2048, 4095]], np.uint16)
    m2 = load_image(_dicom(tmp_path / "a.dcm", px))
    np.testing.assert_allclose(m2, px / 4095.0, atol=1e-6)
    m1 = load_image(_dicom(tmp_path / "b.dcm", px, photometric="MONOCHROME1"))
    np.testing.assert_allclose(m1, 1 - px / 4095.0, atol=1e-6)
    # rescale slope/intercept is linear: the [0, 1] mapping of the stored range is unchanged
    r = load_image(_dicom(tmp_path / "c.dcm", px, slope=2.0, intercept=-1024))
    np.testing.assert_allclose(r, px / 4095.0, atol=1e-6)


def test_signed_dicom(tmp_path):
    px = np.array([[-2048, 0], [1024, 2047]], np.int16)
    out = load_image(_dicom(tmp_path / "s.dcm", px, signed=True))
    np.testing.assert_allclose(out, (px + 2048) / 4095.0, atol=1e-6)


@pytest.mark.parametrize("content,needle", [
    (b"", "empty file"),
    (b"this is not an image", "not a readable image"),
])
def test_bad_files_name_the_file(tmp_path, content, needle):
    p = tmp_path / "bad.png"
    p.write_bytes(content)
    with pytest.raises(DataError, match=needle) as e:
        load_image(p)
    assert str(p) in str(e.value)


def test_truncated_png(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)).save(buf, "PNG")
    p = tmp_path / "trunc.png"
    p.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(DataError, match="trunc.png"):
        load_image(p)


def test_animated_refused(tmp_path):
    frames = [Image.fromarray(np.full((8, 8), v, np.uint8)) for v in (0, 255)]
    p = tmp_path / "anim.png"
    frames[0].save(p, save_all=True, append_images=frames[1:])
    with pytest.raises(DataError, match="multi-frame"):
        load_image(p)


def test_arrays(tmp_path):
    a8 = np.arange(2 * 4 * 4, dtype=np.uint8).reshape(2, 1, 4, 4)
    np.testing.assert_array_equal(array_to_images(a8, "x"), (a8[:, 0] / 255).astype(np.float32))
    a16 = (np.arange(2 * 4 * 4, dtype=np.uint16) * 1000).reshape(2, 4, 4, 1)
    np.testing.assert_allclose(array_to_images(a16, "x"), a16[..., 0] / 65535, atol=1e-7)
    np.savez(tmp_path / "s.npz", images=a8)
    assert load_array_file(tmp_path / "s.npz").shape == (2, 4, 4)
    bad = np.zeros((2, 4, 4), np.float32)
    bad[1, 2, 2] = np.nan
    with pytest.raises(DataError, match="NaN"):
        array_to_images(bad, "gen.npy")
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        array_to_images(np.full((1, 4, 4), -1.0, np.float32), "gen.npy")
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match="obj.npy"):
        load_array_file(tmp_path / "obj.npy")
