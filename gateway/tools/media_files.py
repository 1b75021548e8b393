"""What a file on a CD, a USB stick or in a PACS export is, for ``dicom-gateway upload``: a PS3.10 file, a data set
without the PS3.10 wrapping (old exports and some PACS write the bare data set), an archive to unpack first, or
something else (AUTORUN.INF, a viewer, a README).

STOW-RS takes PS3.10 files only (PS3.18 8.7.3: ``application/dicom`` is the PS3.10 file format), so a bare data set is
wrapped before it is sent: a 128-byte zero preamble, ``DICM`` and a File Meta Information group written by pydicom
(PS3.10 7.1), then the data set's bytes as they are on the media. The data set itself is never changed.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from gateway.uids import is_uid

Kind = Literal["part10", "bare", "gzip", "zip", "other"]
PREAMBLE = 128
IDENTITY = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")
# PS3.10 8.6 / PS3.4 Annex F: a DICOMDIR, the index of a CD or USB export, is no instance to store.
MEDIA_DIRECTORY_SOP_CLASS = "1.2.840.10008.1.3.10"
# A data set's elements ascend (PS3.5 7.1): one without File Meta starts in group 0008 (Identifying, where the SOP
# Class and Instance UIDs are), either byte order; one with File Meta but no preamble starts in group 0002.
FIRST_GROUPS = (b"\x08\x00", b"\x00\x08", b"\x02\x00")
# why an archive is skipped: unpacking is the user's call (what a portal's ZIP holds, where it may expand to)
ARCHIVE_NOTES = {
    "gzip": "a gzip file: decompress it first (gunzip), then upload the .dcm",
    "zip": "a ZIP archive: unpack it first, then upload the folder",
}


@dataclass
class BareDataSet:
    """A data set readable without the PS3.10 wrapping: where it starts in the file and how it is encoded."""

    offset: int  # bytes before the data set: 0 (no preamble) or 132 (a preamble and DICM but no File Meta)
    transfer_syntax: str  # empty when the file has its File Meta, only the preamble is missing
    sop_class_uid: str
    sop_instance_uid: str


def files_under(top: Path) -> Iterator[Path]:
    """The files under ``top`` (``upload`` and ``scan``), entering a linked folder as any folder (``rglob`` passed over
    it silently: a staging folder of links to studies held no file), each folder once (a link back up is a loop, not
    followed)."""
    seen: set[tuple[int, int]] = set()
    for folder, folders, names in os.walk(top, followlinks=True):
        try:
            identity = os.stat(folder)
        except OSError:  # gone since it was listed: as os.walk passes over a folder it cannot list
            continue
        if (identity.st_dev, identity.st_ino) in seen:
            folders.clear()
            continue
        seen.add((identity.st_dev, identity.st_ino))
        folders.sort()  # of two ways to one folder, the first in sorted order names its files
        for name in names:
            if (path := Path(folder, name)).is_file():  # a broken link, a FIFO or a socket is no file to read
                yield path


def kind_of(head: bytes) -> Kind:
    """From the first 132 bytes: the PS3.10 prefix, an archive's magic number, or neither."""
    if len(head) >= PREAMBLE + 4 and head[PREAMBLE : PREAMBLE + 4] == b"DICM":
        return "part10"
    if head[:2] == b"\x1f\x8b":
        return "gzip"
    if head[:4] == b"PK\x03\x04":
        return "zip"
    return "other"


def read_bare(path: Path) -> BareDataSet | None:
    """The data set of a file without File Meta Information, if it is one: pydicom reads it (``force``; it finds
    implicit or explicit VR and the byte order from the first element, as DCMTK's readers do) and it names a valid
    SOP Class, SOP Instance, Study and Series Instance UID. A file that starts with its File Meta group but has no
    preamble is one too (only the preamble is missing). ``None`` for anything else (text, executables)."""
    try:
        with open(path, "rb") as fp:
            head = fp.read(PREAMBLE + 6)
            offset = PREAMBLE + 4 if kind_of(head) == "part10" else 0
            if head[offset : offset + 2] not in FIRST_GROUPS:
                return None  # cheap: pydicom would walk a viewer's .exe element by element
            fp.seek(0)
            ds = pydicom.dcmread(fp, force=True, stop_before_pixels=True, specific_tags=list(IDENTITY))
    except Exception:  # noqa: BLE001 - pydicom raises many types on what is not DICOM
        return None
    if ds.original_encoding is None:
        return None
    has_meta = head[:2] == b"\x02\x00" and not offset
    if bool(ds.file_meta) != has_meta:
        return None  # a File Meta group pydicom found where PS3.10 puts none, or missed: unclear, not sent
    try:
        uids = [str(ds.get(keyword, "")).strip() for keyword in IDENTITY]
    except Exception:  # noqa: BLE001 - a garbage value that decodes to nothing
        return None
    if not all(is_uid(uid) for uid in uids):
        return None
    if has_meta:
        return BareDataSet(offset=0, transfer_syntax="", sop_class_uid=uids[0], sop_instance_uid=uids[1])
    implicit, little = ds.original_encoding
    if implicit and not little:
        return None  # no transfer syntax is implicit VR big endian
    syntax = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian if little else ExplicitVRBigEndian
    return BareDataSet(offset=offset, transfer_syntax=syntax, sop_class_uid=uids[0], sop_instance_uid=uids[1])


def wrap_part10(path: Path, bare: BareDataSet, target: Path) -> None:
    """Write ``target``: the PS3.10 preamble, ``DICM``, File Meta Information naming the data set's SOP Class and
    Instance and its transfer syntax (pydicom adds the group length, version and implementation UID), then
    ``path``'s data set bytes unchanged. A file that has its File Meta gets the preamble and ``DICM`` only."""
    encoded = DicomBytesIO()
    if bare.transfer_syntax:
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = UID(bare.sop_class_uid)
        meta.MediaStorageSOPInstanceUID = UID(bare.sop_instance_uid)
        meta.TransferSyntaxUID = UID(bare.transfer_syntax)
        write_file_meta_info(encoded, meta, enforce_standard=True)
    with open(path, "rb") as src, open(target, "wb") as out:
        out.write(b"\0" * PREAMBLE + b"DICM" + encoded.getvalue())
        src.seek(bare.offset)
        while chunk := src.read(1 << 20):
            out.write(chunk)
