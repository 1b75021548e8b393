"""gateway.dicom.codecs: imagecodecs as pydicom's decoder for JPEG Lossless, JPEG-LS, 12-bit JPEG and HTJ2K, as
registered where the gateway renders (importing ``gateway.render``). Lossless files must decode to exactly the
pixel array of their uncompressed twin: pydicom's own pairs, and twins written with imagecodecs' encoders for the
cases pydicom ships no file of (Process 14 with predictor 6, HTJ2K, signed 12-bit, multi-frame 16-bit colour; JPEG
2000 of 16-bit colour, which Pillow refuses and OpenJPEG through imagecodecs decodes)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.pixels import get_decoder
from pydicom.uid import (
    UID,
    HTJ2KLossless,
    JPEG2000Lossless,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
)

import gateway.render  # noqa: F401 - registers the plugin, as every rendering process does
from tests.fixtures.compressed import compressed_twin, pydicom_file, signed_12_bit

# compressed file shipped by pydicom -> its uncompressed (or RLE) twin
PYDICOM_PAIRS = {
    "SC_rgb_jpeg_gdcm.dcm": "SC_rgb_rle.dcm",  # JPEG Lossless SV1, RGB (GDCM)
    "MR_small_jpeg_ls_lossless.dcm": "MR_small.dcm",  # JPEG-LS lossless, signed 16-bit (CharLS)
}
LOSSLESS = [JPEGLosslessSV1, JPEGLossless, JPEGLSLossless, HTJ2KLossless]
SOURCES = ["MR_small.dcm", "SC_rgb_rle_2frame.dcm", "SC_rgb_rle_16bit_2frame.dcm"]
# imagecodecs' JPEG-LS encoder writes 16-bit precision only: no signed 12-bit JPEG-LS twin (MR_small's pair is signed)
TWINS = [(source, syntax) for source in SOURCES for syntax in LOSSLESS] + [
    ("signed 12-bit", syntax) for syntax in LOSSLESS if syntax != JPEGLSLossless
] + [("SC_rgb_rle_16bit_2frame.dcm", JPEG2000Lossless)]  # Pillow decodes other JPEG 2000, refuses this


def pixels(path: Path) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return pydicom.dcmread(path).pixel_array


@pytest.mark.parametrize("name", PYDICOM_PAIRS)
def test_pydicoms_lossless_files_decode_to_their_twins_pixels(name: str) -> None:
    expected = pixels(pydicom_file(PYDICOM_PAIRS[name]))
    got = pixels(pydicom_file(name))
    assert got.dtype == expected.dtype and got.shape == expected.shape
    assert np.array_equal(got, expected)


@pytest.mark.parametrize(("source", "syntax"), TWINS, ids=[f"{s}-{t.name}" for s, t in TWINS])
def test_a_lossless_twin_decodes_to_its_sources_pixels(tmp_path: Path, source: str, syntax: UID) -> None:
    path = signed_12_bit(tmp_path / "s12.dcm") if source == "signed 12-bit" else pydicom_file(source)
    expected = pixels(path)
    twin = compressed_twin(path, syntax, tmp_path / "twin.dcm")
    got = pixels(twin)
    assert got.dtype == expected.dtype and got.shape == expected.shape
    assert np.array_equal(got, expected)
    if source == "signed 12-bit":
        assert got.min() < 0  # the sign made it through


def test_12_bit_jpeg_extended_decodes_and_pillow_stays_first() -> None:
    """Pillow refuses 12-bit JPEG Extended: the runner falls back on imagecodecs (libjpeg-turbo 12-bit)."""
    decoder = get_decoder(JPEGExtended12Bit)
    assert list(decoder._available) == ["pillow", "imagecodecs"]  # tried in this order
    got = pixels(pydicom_file("JPGExtended.dcm"))
    assert (got.shape, got.dtype) == ((1024, 256), np.dtype("u2"))
    assert (got[420, 140], got[230, 120]) == (244, 95)  # pydicom's reference values for this file


def test_near_lossless_jpeg_ls_is_within_its_near_bound() -> None:
    """SC_rgb_jls_lossy_*: SC_rgb_rle.dcm's picture coded with NEAR = 2 (CharLS), by line and by sample."""
    expected = pixels(pydicom_file("SC_rgb_rle.dcm")).astype(np.int32)
    for name in ("SC_rgb_jls_lossy_line.dcm", "SC_rgb_jls_lossy_sample.dcm"):
        got = pixels(pydicom_file(name))
        assert got.shape == expected.shape
        assert int(np.abs(got.astype(np.int32) - expected).max()) <= 2, name


def test_a_jpeg_2000_pillow_fails_on_decodes_through_openjpeg() -> None:
    """GDCMJ2K_TextGBR.dcm (YBR_RCT, lossless): Pillow reports "broken data stream"; OpenJPEG through imagecodecs
    decodes it to the words "red", "green" and "blue" in those colours on grey (RCT undone: RGB)."""
    got = pixels(pydicom_file("GDCMJ2K_TextGBR.dcm"))
    assert (got.shape, got.dtype) == ((400, 400, 3), np.dtype("u1"))
    assert tuple(got[0, 0]) == (128, 128, 128)
    for colour, (top, bottom) in {(255, 0, 0): (40, 110), (0, 255, 0): (140, 210), (0, 0, 255): (240, 310)}.items():
        band = got[top:bottom].reshape(-1, 3)
        assert int((band == colour).all(axis=1).sum()) > 1000, colour
