"""Whole-slide tiles: a handful of Pillow-encoded base tiles, a tissue layout, and the exact bytes of any
frame (``wsi_tile``), so a test can check a served frame without reading the file back."""

from __future__ import annotations

import functools
import io
import math
import random
import struct

import numpy as np
from PIL import Image

DEFAULT_FRAMES = 32_000
DEFAULT_NATIVE_FRAMES = 64  # 64 x 256 x 256 x 3 = 12.6 MB; 32,000 native tiles would be 6.3 GB

_COM_LEN = 4 + len(b"dicom-gateway synth frame 0000000000")


def _com(frame_number: int) -> bytes:
    """A JPEG COM segment that makes each frame's bytes distinct (decoders ignore it)."""
    text = f"dicom-gateway synth frame {frame_number:010d}".encode()
    return b"\xff\xfe" + struct.pack(">H", len(text) + 2) + text


def _periodic_noise(rng: np.random.Generator, n: int, scale: float) -> np.ndarray:
    """Gaussian-filtered white noise on an n x n torus (tiles cut from it join seamlessly), unit variance."""
    white = rng.standard_normal((n, n))
    fy = np.fft.fftfreq(n)[:, None]
    fx = np.fft.rfftfreq(n)[None, :]
    field = np.fft.irfft2(
        np.fft.rfft2(white) * np.exp(-2 * (math.pi * scale) ** 2 * (fx**2 + fy**2)), s=(n, n)
    )
    return (field - field.mean()) / field.std()


@functools.lru_cache(maxsize=4)
def _base_tiles(seed: int, tile: int) -> tuple[np.ndarray, ...]:
    """Base tile 0 is glass (background); 1..16 are a 4x4 cut of a periodic H&E-like texture."""
    n = 4 * tile
    rng = np.random.default_rng([seed, 7])
    stroma, fibres, cells, density = (_periodic_noise(rng, n, s) for s in (40.0, 3.0, 6.0, 60.0))
    pink = np.array([232.0, 150.0, 192.0])
    rgb = pink * (1.0 + 0.06 * stroma + 0.04 * fibres)[..., None]
    lumen = np.clip((-1.2 - stroma) * 3.0, 0.0, 1.0)[..., None]
    rgb = rgb * (1 - lumen) + np.array([246.0, 238.0, 244.0]) * lumen
    nuclei = np.clip((cells - (1.5 - 0.5 * density)) * 4.0, 0.0, 1.0)[..., None] * (1 - lumen)
    rgb = rgb * (1 - nuclei) + np.array([78.0, 44.0, 140.0]) * nuclei
    texture = np.clip(rgb, 0, 255).astype(np.uint8)
    glass = np.clip(241.0 + rng.standard_normal((tile, tile, 1)) * 1.5, 0, 255) * np.ones(3)
    tiles = [glass.astype(np.uint8)]
    tiles += [
        texture[r * tile : (r + 1) * tile, c * tile : (c + 1) * tile].copy()
        for r in range(4)
        for c in range(4)
    ]
    return tuple(tiles)


@functools.lru_cache(maxsize=4)
def _jpeg_tiles(seed: int, tile: int) -> tuple[tuple[bytes, bytes], ...]:
    """Each base tile JPEG-encoded once (baseline, 4:2:2 = YBR_FULL_422), split where the COM segment goes:
    right after the JFIF APP0 segment, which JFIF wants first after SOI."""
    out = []
    for pixels in _base_tiles(seed, tile):
        buffer = io.BytesIO()
        Image.fromarray(pixels, "RGB").save(buffer, "JPEG", quality=80, subsampling=1, optimize=False)
        data = buffer.getvalue()
        cut = 2
        if data[2:4] == b"\xff\xe0":
            cut = 4 + struct.unpack(">H", data[4:6])[0]
        out.append((data[:cut], data[cut:]))
    return tuple(out)


def _grid(frames: int) -> tuple[int, int]:
    """(rows, columns) of tiles: TILED_FULL needs frames == rows * columns, so the most square factor pair,
    landscape like a glass slide. A prime frame count gives a one-row strip."""
    rows = max(d for d in range(1, math.isqrt(frames) + 1) if frames % d == 0)
    return rows, frames // rows


@functools.lru_cache(maxsize=8)
def _layout(seed: int, frames: int) -> np.ndarray:
    """Base tile index of every frame (row-major, frame 1 first): two wobbly tissue sections on glass."""
    rows, columns = _grid(frames)
    r, c = np.divmod(np.arange(frames), columns)
    u, v = (c + 0.5) / columns, (r + 0.5) / rows
    phase = random.Random(f"dicom-gateway-synth-layout-{seed}").random() * 2 * math.pi
    tissue = np.zeros(frames, dtype=bool)
    for cx in (0.3, 0.7):
        dx, dy = (u - cx) / 0.17, (v - 0.5) / 0.38
        wobble = 1 + 0.15 * np.sin(3 * np.arctan2(dy, dx) + phase + cx * 7)
        tissue |= dx**2 + dy**2 < wobble**2
    return np.where(tissue, 1 + (r % 4) * 4 + (c % 4), 0).astype(np.int16)



def wsi_tile(
    seed: int, frame_number: int, *, frames: int | None = None, native: bool = False, tile: int = 256
) -> bytes:
    """The exact bytes ``make_wsi`` writes for ``frame_number`` (1-based) given the same seed, frames, native
    and tile: the whole JPEG frame with its 0x00 pad (fragments concatenated), or the raw RGB tile if native.
    """
    frames = (DEFAULT_NATIVE_FRAMES if native else DEFAULT_FRAMES) if frames is None else frames
    if not 1 <= frame_number <= frames:
        raise ValueError(f"frame number {frame_number} outside 1..{frames}")
    base = int(_layout(seed, frames)[frame_number - 1])
    if native:
        # Stamp the frame number into the first pixel (and a half) so that no two native frames are equal.
        return struct.pack(">I", frame_number) + _base_tiles(seed, tile)[base].tobytes()[4:]
    head, tail = _jpeg_tiles(seed, tile)[base]
    data = head + _com(frame_number) + tail
    return data + b"\x00" if len(data) % 2 else data


