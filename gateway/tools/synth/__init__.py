"""Synthetic DICOM for demos, tests and benchmarks: a CT or MR series and a whole-slide image (WSI).

The files are meant to be *hard* in the ways real files are hard, so the gateway is tested against them:

* the CT/MR series is a 512x512 phantom (body, fat, bone ring, organs) that changes slice by slice;
* the WSI is a TILED_FULL JPEG pyramid level with 32,000 frames by default, with a filled, empty or extended
  offset table and optionally several fragments per frame;
* unless ``clean`` is set, fake PHI sits where real files hide it: nested three sequences deep, in private
  blocks and private sequences, in free text, and in a private element stored *after* Pixel Data.

Everything is a pure function of the seed (names, dates, UIDs, pixels), so ``--seed`` gives byte-identical
files. The WSI writer never builds the Pixel Data value in memory: it computes every frame's length up front
(each frame is one of a few Pillow-encoded base tiles plus a fixed-size JPEG COM segment carrying the frame
number), writes the header with pydicom, then streams the fragments.

Modules: ``identity`` (fake patients, UIDs), ``attributes`` (shared modules and where the PHI hides),
``phantom`` (CT/MR series), ``tiles`` (WSI tile bytes and layout), ``wsi`` (the WSI writer), ``cli``.
"""

from __future__ import annotations

# The ``X as X`` names stay importable from here as before the split (bench and tests use them, and clear
# the tile caches) without joining ``*``.
from gateway.tools.synth.cli import synth
from gateway.tools.synth.identity import FAKE_PATIENT_NAMES
from gateway.tools.synth.identity import PRIVATE_CREATOR as PRIVATE_CREATOR
from gateway.tools.synth.phantom import CT_IMAGE, MR_IMAGE, make_series
from gateway.tools.synth.phantom import DEFAULT_SLICES as DEFAULT_SLICES
from gateway.tools.synth.tiles import DEFAULT_FRAMES as DEFAULT_FRAMES
from gateway.tools.synth.tiles import DEFAULT_NATIVE_FRAMES as DEFAULT_NATIVE_FRAMES
from gateway.tools.synth.tiles import _base_tiles as _base_tiles
from gateway.tools.synth.tiles import _jpeg_tiles as _jpeg_tiles
from gateway.tools.synth.tiles import _layout as _layout
from gateway.tools.synth.tiles import wsi_tile
from gateway.tools.synth.wsi import WSI_IMAGE, make_wsi
from gateway.tools.synth.wsi import Offsets as Offsets

__all__ = [
    "CT_IMAGE",
    "FAKE_PATIENT_NAMES",
    "MR_IMAGE",
    "WSI_IMAGE",
    "make_series",
    "make_wsi",
    "synth",
    "wsi_tile",
]
