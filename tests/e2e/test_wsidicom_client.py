"""wsidicom (PyPI ``wsidicom``, the whole-slide library of slide pipelines and wsidicomizer), unmodified, on both
sides of the gateway: it writes a slide's pyramid (every level down to one tile, in the transfer syntaxes and
offset-table forms it offers), the files go in by STOW-RS, and it opens the slide again over DICOMweb through the
token root (``WsiDicom.open_web``, as a slide viewer's backend does). The levels it finds, every tile's encoded
bytes, and decoded regions that cross tiles match wsidicom's own reading of the same files.

Left out, each a third-party defect reproduced with these files (whatever server answers):
- uncompressed slides over DICOMweb: wsidicom 0.36 hands dicomweb-client's ``bytearray`` frame to its pydicom
  decoder, which pydicom takes as a list of numbers (``TypeError``);
- HTJ2K: dicomweb-client 0.61 has no media type for its transfer syntaxes and refuses to ask;
- a slide opened over DICOMweb and then written with ``save``: wsidicom writes the metadata's Pixel Data (a
  BulkDataURI, read as empty) and then the pixels, two (7FE0,0010) elements, which the gateway refuses like any
  data set naming an element twice (0xC000, tests/e2e/test_stow.py).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient
from pydicom.uid import generate_uid
from wsidicom import WsiDicom, WsiDicomWebClient
from wsidicom.codec import settings as codec
from wsidicom.codec.settings import Channels

from gateway.tools.synth import make_wsi
from tests.e2e.harness import RunningStack

pytestmark = [
    pytest.mark.third_party,
    # wsidicom reads the metadata with pydicom's from_json and no bulk data handler: Pixel Data is a BulkDataURI
    # there (PS3.18 F.2.7), whose value it never needs (frames come by WADO-RS)
    pytest.mark.filterwarnings("ignore:No bulk data URI handler provided:UserWarning"),
]

# name -> wsidicom ``save`` arguments: JPEG as the source holds it, with each offset-table form wsidicom writes,
# and transcoded to the lossless syntaxes it encodes with the codecs installed here
VARIANTS: dict[str, Callable[[], dict[str, Any]]] = {
    "jpeg-bot": lambda: {"offset_table": "bot"},
    "jpeg-eot": lambda: {"offset_table": "eot"},
    "jpeg-empty": lambda: {"offset_table": "empty"},
    "jpeg-ls": lambda: {"transcoding": codec.JpegLsSettings(bits=8, channels=Channels.RGB, level=0)},
    "jpeg-2000": lambda: {"transcoding": codec.Jpeg2kSettings(bits=8, channels=Channels.RGB, levels=[0])},
    "rle": lambda: {"transcoding": codec.RleSettings(8, Channels.RGB)},
}
TILE = 256


def _pyramid(source: Path, out: Path, options: dict[str, Any]) -> list[Path]:
    """The pyramid wsidicom writes from ``source`` (a one-level slide): every level down to one tile."""
    out.mkdir()
    with WsiDicom.open(source) as slide:
        slide.save(out, add_missing_levels=True, force_transcoding="transcoding" in options, **options)
    return sorted(out.iterdir())


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Path]]:
    """Each variant's files, a slide of its own study: 8 x 8 tiles of 256 px (2,048 px square) at the base."""
    root = tmp_path_factory.mktemp("wsidicom")
    files = {}
    for name, options in VARIANTS.items():
        source = make_wsi(root / f"{name}-source", frames=64, clean=True, study_uid=generate_uid())
        files[name] = _pyramid(source.parent, root / name, options())
        shutil.rmtree(source.parent)
    return files


@pytest.fixture(scope="module")
def stored(stack: RunningStack, written: dict[str, list[Path]]) -> RunningStack:
    answer = stack.stow([path for paths in written.values() for path in paths])
    assert answer.status_code == 200, answer.text
    assert "00081198" not in answer.json()  # no failed SOP sequence: every file stored
    return stack


def _over_dicomweb(stack: RunningStack, files: list[Path], transfer_syntax: str | None) -> WsiDicom:
    first = pydicom.dcmread(files[0], stop_before_pixels=True)
    token = stack.issue([first.StudyInstanceUID])["token"]
    client = WsiDicomWebClient(DICOMwebClient(url=stack.root(token)))
    return WsiDicom.open_web(
        client, first.StudyInstanceUID, [first.SeriesInstanceUID], requested_transfer_syntax=transfer_syntax
    )


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_wsidicom_reads_over_dicomweb_the_pyramid_it_wrote(
    stored: RunningStack, written: dict[str, list[Path]], variant: str
) -> None:
    files = written[variant]
    syntax = pydicom.dcmread(files[0], stop_before_pixels=True).file_meta.TransferSyntaxUID
    with WsiDicom.open(files[0].parent) as local, _over_dicomweb(stored, files, syntax) as web:
        assert [level.size for level in web.levels] == [level.size for level in local.levels]
        assert [level.size.width for level in local.levels] == [2048, 1024, 512, 256]
        for number, level in enumerate(local.levels):
            columns, rows = -(-level.size.width // TILE), -(-level.size.height // TILE)
            for x in range(columns):
                for y in range(rows):
                    assert web.read_encoded_tile(number, (x, y)) == local.read_encoded_tile(number, (x, y)), (x, y)
        # a region across four tiles of the base, and one of the level below, decoded
        for level, location, size in ((0, (200, 150), (400, 300)), (1, (0, 0), (700, 650))):
            expected = np.asarray(local.read_region(location, level, size))
            assert np.array_equal(np.asarray(web.read_region(location, level, size)), expected)
        assert np.array_equal(np.asarray(web.read_thumbnail((200, 200))), np.asarray(local.read_thumbnail((200, 200))))


def test_wsidicom_with_its_default_request_reads_the_same_pixels(
    stored: RunningStack, written: dict[str, list[Path]]
) -> None:
    """Without a requested transfer syntax wsidicom asks for the frames as it chooses: the pixels are the same."""
    files = written["jpeg-eot"]
    with WsiDicom.open(files[0].parent) as local, _over_dicomweb(stored, files, None) as web:
        expected = np.asarray(local.read_region((1000, 900), 0, (600, 500)))
        assert np.array_equal(np.asarray(web.read_region((1000, 900), 0, (600, 500))), expected)
