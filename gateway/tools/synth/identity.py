"""Fake identities and deterministic UIDs: who the synthetic patient is, as a pure function of the seed."""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass
from datetime import date, timedelta

from pydicom.uid import UID

from gateway.uids import check_uid

PRIVATE_CREATOR = "ACME_SYNTH 1.0"

# Fake identities. Non-ASCII names on purpose (SpecificCharacterSet ISO_IR 192): scanners and JSON must cope.

_PATIENTS = [
    ("Doe", "Jane", "F"),
    ("Müller", "Hans Peter", "M"),
    ("García López", "María", "F"),
    ("O'Brien", "Seán", "M"),
    ("Nguyen", "Thi Lan", "F"),
    ("Kowalski", "Anna", "F"),
    ("Johansson", "Erik", "M"),
    ("Rossi", "Giulia", "F"),
    ("Okafor", "Chinedu", "M"),
    ("Tanaka", "Yuki", "F"),
    ("Dubois", "Claire", "F"),
    ("Smith", "Robert", "M"),
]
# Every fake patient name (PN form) the generator can write: a PHI scanner's test can look for these.
FAKE_PATIENT_NAMES = tuple(f"{family}^{given}" for family, given, _ in _PATIENTS)
_DOCTORS = [
    "Lindqvist^Sara^^Dr",
    "Haddad^Omar^^Dr",
    "Baker^Emily^^Dr",
    "Ferreira^João^^Dr",
    "Kim^Min-jun^^Dr",
]
_OPERATORS = ["Weber^Lukas", "Brown^Olivia", "Santos^Ana", "Novak^Petr"]
_STREETS = ["Elm Street", "Rue des Lilas", "Hauptstraße", "Via Roma", "Calle Mayor", "Maple Avenue"]
_CITIES = ["Springfield", "Lyon", "Freiburg", "Bologna", "Sevilla", "Portland"]
_INSTITUTIONS = ["St. Elsewhere General Hospital", "Mercy West Medical Center", "Klinikum Nordstadt"]


@dataclass(frozen=True)
class _Identity:
    """Everything identifying about one fake patient and visit; a pure function of the seed."""

    family: str
    given: str
    sex: str
    patient_id: str
    other_id: str
    birth_date: str
    age: str
    address: str
    phone: str
    accession: str
    study_date: str
    study_time: str
    referring: str
    operator: str
    institution: str
    institution_address: str
    device_serial: str
    pseudonym: str  # what --clean writes as PatientID: the caller's --patient, else empty

    @property
    def name(self) -> str:
        return f"{self.family}^{self.given}"


def _identity(seed: int, patient: str | None) -> _Identity:
    rng = random.Random(f"dicom-gateway-synth-identity-{seed}")
    family, given, sex = rng.choice(_PATIENTS)
    study = date(2023, 1, 2) + timedelta(days=rng.randrange(700))
    years = rng.randrange(18, 90)
    born = study - timedelta(days=years * 365 + rng.randrange(365))
    return _Identity(
        family=family,
        given=given,
        sex=sex,
        patient_id=patient if patient is not None else f"MRN{rng.randrange(10**7):07d}",
        other_id=f"{rng.randrange(100, 999)}-{rng.randrange(10, 99)}-{rng.randrange(1000, 9999)}",
        birth_date=born.strftime("%Y%m%d"),
        age=f"{years:03d}Y",
        address=f"{rng.randrange(1, 200)} {rng.choice(_STREETS)}, {rng.choice(_CITIES)}",
        phone=f"+1 555 01{rng.randrange(100):02d} {rng.randrange(1000):03d}",
        accession=f"A{rng.randrange(10**8):08d}",
        study_date=study.strftime("%Y%m%d"),
        study_time=f"{rng.randrange(7, 19):02d}{rng.randrange(60):02d}{rng.randrange(60):02d}",
        referring=rng.choice(_DOCTORS),
        operator=rng.choice(_OPERATORS),
        institution=rng.choice(_INSTITUTIONS),
        institution_address=f"{rng.randrange(1, 99)} Hospital Road, {rng.choice(_CITIES)}",
        device_serial=f"SN{rng.randrange(10**6):06d}",
        pseudonym=patient or "",
    )


def _uid(seed: int, *parts: str) -> UID:
    """Deterministic 2.25 UID from a name-based (v5) UUID: same seed and parts, same UID, on every machine.
    (pydicom's ``generate_uid(prefix=None, entropy_srcs=...)`` ignores the entropy and is random.)"""
    name = "/".join(["dicom-gateway-synth", str(seed), *parts])
    return UID(f"2.25.{uuid.uuid5(uuid.NAMESPACE_URL, name).int}")


def _study_uid(seed: int, study_uid: str | None, kind: str) -> str:
    if study_uid is None:
        return str(_uid(seed, "study", kind))
    return check_uid(study_uid, "study UID")

