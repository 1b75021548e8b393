"""Command line: ``dicom-gateway synth ct|mr|wsi --out DIR``."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from gateway.errors import InvalidUID
from gateway.tools.cliparams import GivenPath
from gateway.tools.synth.options import patient_id
from gateway.tools.synth.phantom import DEFAULT_SLICES, make_series
from gateway.tools.synth.tiles import DEFAULT_FRAMES, DEFAULT_NATIVE_FRAMES
from gateway.tools.synth.wsi import Offsets, make_wsi


def _common_options(function: Callable[..., None]) -> Callable[..., None]:
    for option in reversed(
        [
            click.option(
                "--out",
                required=True,
                type=GivenPath(file_okay=False, path_type=Path),
                help="Output folder (created if missing; files in it are overwritten).",
            ),
            click.option(
                "--seed", default=0, show_default=True, type=int, help="Same seed, byte-identical files."
            ),
            click.option("--clean", is_flag=True, help="No PHI at all: passes a PS3.15 basic-profile scan."),
            click.option(
                "--study-uid", default=None, help="Put the series into this study (default: from the seed)."
            ),
            click.option(
                "--patient",
                default=None,
                callback=patient_id,
                help="PatientID to use (default: a fake MRN from the seed).",
            ),
        ]
    ):
        function = option(function)
    return function


def _run(make: Callable[[], Any]) -> Any:
    try:
        return make()
    except (ValueError, InvalidUID) as error:
        raise click.UsageError(str(error)) from None
    except KeyboardInterrupt:  # was click's "Aborted!", exit 1, the status of a failure
        click.echo("stopped (Ctrl-C): the files written are whole; the same command again writes them all", err=True)
        sys.exit(130)


@click.group(name="synth")
def synth() -> None:
    """Write synthetic DICOM (CT, MR, whole-slide) with realistic fake PHI, or none with --clean."""


def _series_command(modality: str) -> click.Command:
    @_common_options
    @click.option("--slices", type=int, default=DEFAULT_SLICES[modality], show_default=True)
    @click.option("--rows", type=int, default=512, show_default=True)
    @click.option("--columns", type=int, default=512, show_default=True)
    def command(
        out: Path,
        seed: int,
        clean: bool,
        study_uid: str | None,
        patient: str | None,
        slices: int,
        rows: int,
        columns: int,
    ) -> None:
        started = time.perf_counter()
        paths = _run(
            lambda: make_series(
                out,
                modality=modality,
                slices=slices,
                rows=rows,
                columns=columns,
                seed=seed,
                clean=clean,
                study_uid=study_uid,
                patient=patient,
            )
        )
        size = sum(p.stat().st_size for p in paths)
        click.echo(
            f"wrote {len(paths)} {modality} files ({size / 1e6:.1f} MB) to {out} "
            f"in {time.perf_counter() - started:.1f} s: {paths[0].name} .. {paths[-1].name}"
        )

    command.__doc__ = (
        f"{'A CT' if modality == 'CT' else 'An MR'} series: a 16-bit phantom that changes per slice."
    )
    return click.command(name=modality.lower())(command)


@synth.command(name="wsi")
@_common_options
@click.option(
    "--frames",
    type=int,
    default=None,
    help=f"Number of tiles [default: {DEFAULT_FRAMES:,}, or {DEFAULT_NATIVE_FRAMES} with --native].",
)
@click.option(
    "--offsets",
    type=click.Choice(["bot", "empty", "eot"]),
    default=None,
    help="bot: Basic Offset Table filled [default]; empty: empty BOT; eot: empty BOT + Extended "
    "Offset Table.",
)
@click.option(
    "--fragments-per-frame",
    type=int,
    default=1,
    show_default=True,
    help="Split each JPEG frame into N items.",
)
@click.option("--native", is_flag=True, help="Uncompressed RGB, Explicit VR Little Endian.")
@click.option("--tile", type=int, default=256, show_default=True, help="Tile width and height in pixels.")
def wsi_command(
    out: Path,
    seed: int,
    clean: bool,
    study_uid: str | None,
    patient: str | None,
    frames: int | None,
    offsets: Offsets | None,
    fragments_per_frame: int,
    native: bool,
    tile: int,
) -> None:
    """A VL Whole Slide Microscopy image: 256x256 JPEG baseline tiles, TILED_FULL."""
    if native and offsets is not None:
        raise click.UsageError("--offsets applies to JPEG tiles only, not to --native")
    started = time.perf_counter()
    path = _run(
        lambda: make_wsi(
            out,
            frames=frames,
            offsets=offsets or "bot",
            fragments_per_frame=fragments_per_frame,
            native=native,
            tile=tile,
            seed=seed,
            clean=clean,
            study_uid=study_uid,
            patient=patient,
        )
    )
    count = frames or (DEFAULT_NATIVE_FRAMES if native else DEFAULT_FRAMES)
    click.echo(
        f"wrote {path} ({count:,} frames, {path.stat().st_size / 1e6:.1f} MB) "
        f"in {time.perf_counter() - started:.1f} s"
    )


for _modality in ("CT", "MR"):
    synth.add_command(_series_command(_modality))

from gateway.tools.synth.burned_cli import sc_command, us_command  # noqa: E402 - burned-in text: its own module

synth.add_command(us_command)
synth.add_command(sc_command)
