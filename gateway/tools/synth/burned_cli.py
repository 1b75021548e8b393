"""``dicom-gateway synth us|sc``: ultrasound cine and secondary captures with burned-in PHI (``burned``)."""

from __future__ import annotations

import time
from pathlib import Path

import click

from gateway.tools.cliparams import GivenPath
from gateway.tools.synth.burned import make_sc, make_us
from gateway.tools.synth.options import patient_id


def _report(path: Path, started: float, frames: int) -> None:
    click.echo(
        f"wrote {path} ({frames} frames, {path.stat().st_size / 1e6:.1f} MB) in {time.perf_counter() - started:.1f} s"
    )


_out = click.option("--out", required=True, type=GivenPath(file_okay=False, path_type=Path), help="Output folder.")
_seed = click.option("--seed", default=0, show_default=True, type=int, help="Same seed, same patient and pixels.")
_jpeg = click.option("--jpeg", is_flag=True, help="JPEG Baseline frames instead of native pixels.")
_patient = click.option(
    "--patient", default=None, callback=patient_id, help="PatientID to use (default: a fake MRN from the seed)."
)


@click.command(name="us")
@_out
@_seed
@click.option("--frames", default=30, show_default=True, type=int, help="Cine length.")
@click.option("--color", is_flag=True, help="RGB (YBR_FULL_422 with --jpeg) instead of MONOCHROME2.")
@_jpeg
@_patient
def us_command(out: Path, seed: int, frames: int, color: bool, jpeg: bool, patient: str | None) -> None:
    """A multi-frame ultrasound cine, 640x480, with name, ID and dates burned into every frame."""
    started = time.perf_counter()
    try:
        path = make_us(out, frames=frames, color=color, jpeg=jpeg, seed=seed, patient=patient)
    except ValueError as error:
        raise click.UsageError(str(error)) from None
    _report(path, started, frames)


@click.command(name="sc")
@_out
@_seed
@click.option("--grey", is_flag=True, help="MONOCHROME2 instead of RGB.")
@_jpeg
@_patient
def sc_command(out: Path, seed: int, grey: bool, jpeg: bool, patient: str | None) -> None:
    """A secondary capture (screenshot), 640x480, with name, ID and dates burned in."""
    started = time.perf_counter()
    path = make_sc(out, color=not grey, jpeg=jpeg, seed=seed, patient=patient)
    _report(path, started, 1)
