"""imagecodecs as a pydicom pixel-decoder plugin for the compressed syntaxes pydicom cannot decode here.

pydicom 3 decodes JPEG Baseline/Extended 8-bit and JPEG 2000 through Pillow, and RLE itself; JPEG Lossless
(Process 14 and SV1, the usual syntax of CD exports), JPEG-LS, 12-bit JPEG Extended and HTJ2K need gdcm or
pylibjpeg, which are not installed. imagecodecs (already a dependency: the HTJ2K encoder of ``gateway.derive``)
has decoders for all of them: libjpeg-turbo 3 (lossless and 12-bit JPEG), CharLS (JPEG-LS), OpenJPH (HTJ2K) and
OpenJPEG (JPEG 2000).

``register()`` adds the plugin behind the ones pydicom already has, so Pillow stays first where it decodes; for
JPEG Extended and JPEG 2000 the plugin is the fallback pydicom's runner tries when Pillow fails: Pillow refuses
12-bit JPEG samples and colour JPEG 2000 of more than 8 bits, and fails on some valid codestreams (GDCM's YBR_RCT
example) that OpenJPEG through imagecodecs decodes. The plugin returns the components as coded (no colour
transform; J2K's RCT/ICT undone, as pydicom's J2K plugins do) and tells the runner their container size and
layout; pydicom's runner then does what it does for its own plugins: signedness (JPEG-LS and J2K sign
correction, unused high bits), YBR to RGB, and the checks on the frame's length.
"""

from __future__ import annotations

from typing import Any

import imagecodecs
import numpy as np
from pydicom import uid
from pydicom.pixels import decoders
from pydicom.pixels.common import PhotometricInterpretation as PI
from pydicom.pixels.decoders.base import Decoder, DecodeRunner, get_decoder

LABEL = "imagecodecs"
# JPEG's retired DCT processes that DCMTK's dcmcjpeg still writes (+es, +ep) and Orthanc renders: spectral selection
# (processes 6 and 8) and full progression (10 and 12). pydicom has no decoder for them; libjpeg-turbo decodes both.
JPEG_SPECTRAL_SELECTION = uid.UID("1.2.840.10008.1.2.4.53")
JPEG_FULL_PROGRESSION = uid.UID("1.2.840.10008.1.2.4.55")
RETIRED_DECODERS = {syntax: Decoder(syntax) for syntax in (JPEG_SPECTRAL_SELECTION, JPEG_FULL_PROGRESSION)}
_JPEG = (uid.JPEGExtended12Bit, uid.JPEGLossless, uid.JPEGLosslessSV1, *RETIRED_DECODERS)
_JPEG_LS = (uid.JPEGLSLossless, uid.JPEGLSNearLossless)
_J2K = (uid.JPEG2000Lossless, uid.JPEG2000)
_HTJ2K = (uid.HTJ2KLossless, uid.HTJ2KLosslessRPCL, uid.HTJ2K)
_DECODERS = {
    uid.JPEGExtended12Bit: decoders.JPEGExtended12BitDecoder,
    uid.JPEG2000Lossless: decoders.JPEG2000LosslessDecoder,
    uid.JPEG2000: decoders.JPEG2000Decoder,
    uid.JPEGLossless: decoders.JPEGLosslessDecoder,
    uid.JPEGLosslessSV1: decoders.JPEGLosslessSV1Decoder,
    uid.JPEGLSLossless: decoders.JPEGLSLosslessDecoder,
    uid.JPEGLSNearLossless: decoders.JPEGLSNearLosslessDecoder,
    uid.HTJ2KLossless: decoders.HTJ2KLosslessDecoder,
    uid.HTJ2KLosslessRPCL: decoders.HTJ2KLosslessRPCLDecoder,
    uid.HTJ2K: decoders.HTJ2KDecoder,
    **RETIRED_DECODERS,
}
# pydicom's plugin interface: what each syntax needs, and whether it is there
DECODER_DEPENDENCIES = {syntax: ("numpy", "imagecodecs") for syntax in _DECODERS}


def is_available(syntax: str) -> bool:
    if syntax in _JPEG:
        return bool(imagecodecs.JPEG8.available)
    if syntax in _JPEG_LS:
        return bool(imagecodecs.JPEGLS.available)
    if syntax in _J2K:
        return bool(imagecodecs.JPEG2K.available)
    return syntax in _HTJ2K and bool(imagecodecs.HTJ2K.available)


def _decode(src: bytes, runner: DecodeRunner) -> np.ndarray[Any, Any]:
    syntax = runner.transfer_syntax
    if syntax in _JPEG:
        # the components as coded: libjpeg's guess (YCbCr for 3 components without an Adobe marker) would
        # convert them, while pydicom converts YBR to RGB itself from Photometric Interpretation
        space = "GRAYSCALE" if runner.samples_per_pixel == 1 else "RGB"
        return imagecodecs.jpeg8_decode(src, colorspace=space, outcolorspace=space)
    if syntax in _JPEG_LS:
        return imagecodecs.jpegls_decode(src)
    if syntax in _J2K:
        return imagecodecs.jpeg2k_decode(src, planar=False)
    return imagecodecs.htj2k_decode(src, planar=False)


def decode_frame(src: bytes, runner: DecodeRunner) -> bytes:
    """One frame's samples, colour-by-pixel, in the smallest container of 8 or 16 bits that holds the codestream's
    precision (pydicom's JPEG-LS and J2K plugins do the same; the runner sizes its array from ``bits_allocated``)."""
    syntax = runner.transfer_syntax
    pixels = _decode(src, runner)
    if pixels.ndim == 3 and pixels.shape[-1] != runner.samples_per_pixel:
        raise ValueError("the codestream's components are not the image's Samples per Pixel")
    if pixels.dtype.itemsize > 2:
        raise ValueError("more than 16 bits per sample")
    runner.set_option("bits_allocated", 8 * pixels.dtype.itemsize)
    if runner.samples_per_pixel > 1:
        runner.set_option("planar_configuration", 0)
    if syntax not in _JPEG + _JPEG_LS and runner.photometric_interpretation in (PI.YBR_ICT, PI.YBR_RCT):
        # OpenJPEG and OpenJPH undo the codestream's component transform, as in pydicom's own J2K plugins
        runner.set_option("photometric_interpretation", PI.RGB)
    return np.ascontiguousarray(pixels).astype(pixels.dtype.newbyteorder("<"), copy=False).tobytes()


def decoder(syntax: uid.UID) -> Decoder:
    """pydicom's decoder of ``syntax``, or this module's for a retired JPEG process; ``NotImplementedError`` when
    there is none."""
    return RETIRED_DECODERS.get(syntax) or get_decoder(syntax)


def register() -> None:
    """Add the plugin once per process, behind pydicom's own (they are tried in order)."""
    for decoder in _DECODERS.values():
        try:
            decoder.add_plugin(LABEL, (__name__, "decode_frame"))
        except ValueError:  # registered already (a second import path, a test process)
            pass
