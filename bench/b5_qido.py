"""B5: QIDO-RS on 100,000 studies (SQLite), and series metadata, through NGINX + auth with the API key.

The catalog is filled directly (SQL on the tables of ``gateway/catalog/schema.py``, after the Alembic
migrations): 100,000 studies of 40,000 patients over 25 years, 1-3 series each (about 200,000 series) with
ModalitiesInStudy computed as the catalog computes it, and study/series ``attrs`` shaped like ingest's QIDO
attributes. Then the stack starts on that catalog and the 200-slice CT and the 32,000-frame WSI are stored
through STOW-RS (so they are real, indexed instances). Queries, interleaved, 200 each, ``limit=100``, each with
values drawn at random (a different patient, month or modality per request): PatientID exact, StudyDate range
(one month, ~330 matches), ModalitiesInStudy (one modality, ~20,000 matches); plus the series metadata of the CT
(200 instances) and of the WSI, with ``Accept-Encoding: gzip`` as browsers send it. Target: p50 < 20 ms each.
"""

from __future__ import annotations

import functools
import gzip
import json
import random
import time
from collections import Counter
from datetime import date, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

from bench.common import (
    Client,
    Report,
    ct_series,
    header,
    main,
    percentile,
    run_dir,
    running_stack,
    timed,
    uids,
    wsi,
)

STUDIES = 100_000
PATIENTS = 40_000
SAMPLES = 200
METADATA_SAMPLES = 100
MODALITIES = ["CT", "MR", "CR", "DX", "US", "MG", "PT", "NM", "XA", "SM", "SR", "OT"]
WEIGHTS = [20, 15, 15, 10, 10, 8, 5, 4, 4, 3, 3, 3]
FAMILY = ["Doe", "Müller", "García", "O'Brien", "Nguyen", "Kowalski", "Johansson", "Rossi", "Okafor", "Tanaka"]
GIVEN = ["Jane", "Hans", "María", "Seán", "Lan", "Anna", "Erik", "Giulia", "Chinedu", "Yuki", "Claire", "Robert"]
EPOCH = date(2000, 1, 1)
DAYS = 9_125


def _patient(i: int) -> str:
    return f"PAT{(i * 7_919) % PATIENTS:06d}"


@functools.cache
def _studies_per_patient() -> Counter[str]:
    return Counter(_patient(i) for i in range(STUDIES))


def _pn(value: str) -> dict[str, object]:
    return {"vr": "PN", "Value": [{"Alphabetic": value}]}


def fill_catalog(db: Path, seed: int = 5) -> tuple[int, float]:
    """Create the schema with the migrations and bulk-insert the synthetic studies and series; returns
    (series rows, seconds)."""
    import sqlalchemy as sa

    from gateway.catalog import Catalog
    from gateway.catalog.schema import series, studies

    started = time.perf_counter()
    url = f"sqlite:///{db}"
    catalog = Catalog(url)
    catalog.migrate()
    catalog.close()
    rng = random.Random(seed)
    now = int(time.time())
    study_rows, series_rows = [], []
    for i in range(STUDIES):
        uid = f"2.25.{10**12 + i}"
        patient = _patient(i)
        name = f"{FAMILY[i % len(FAMILY)]}^{GIVEN[(i // len(FAMILY)) % len(GIVEN)]}"
        day = (EPOCH + timedelta(days=rng.randrange(DAYS))).strftime("%Y%m%d")
        clock = f"{rng.randrange(7, 19):02d}{rng.randrange(60):02d}{rng.randrange(60):02d}"
        accession = f"A{i:08d}"
        description = f"{rng.choice(['CHEST', 'ABDOMEN', 'HEAD', 'KNEE', 'BREAST', 'SKIN'])} STUDY"
        n_series = rng.choice((1, 1, 2, 2, 2, 3))
        modalities = rng.choices(MODALITIES, WEIGHTS, k=n_series)
        instances = 0
        for s, modality in enumerate(modalities):
            count = rng.randrange(1, 300)
            instances += count
            series_uid = f"{uid}.{s + 1}"
            series_rows.append({
                "series_uid": series_uid, "study_uid": uid, "modality": modality, "series_number": s + 1,
                "series_description": f"{modality} SERIES {s + 1}", "num_instances": count,
                "attrs": json.dumps({
                    "00080060": {"vr": "CS", "Value": [modality]},
                    "0008103E": {"vr": "LO", "Value": [f"{modality} SERIES {s + 1}"]},
                    "0020000D": {"vr": "UI", "Value": [uid]},
                    "0020000E": {"vr": "UI", "Value": [series_uid]},
                    "00200011": {"vr": "IS", "Value": [s + 1]},
                }),
            })
        study_rows.append({
            "study_uid": uid, "patient_id": patient, "patient_name": name, "patient_birth_date": "19600101",
            "patient_sex": "F" if i % 2 else "M", "study_date": day, "study_time": clock,
            "accession_number": accession, "study_id": str(i), "study_description": description,
            "referring_physician_name": "Lindqvist^Sara", "modalities_in_study": "\\".join(sorted(set(modalities))),
            "num_series": n_series, "num_instances": instances, "updated_at": now,
            "attrs": json.dumps({
                "00080005": {"vr": "CS", "Value": ["ISO_IR 192"]},
                "00080020": {"vr": "DA", "Value": [day]},
                "00080030": {"vr": "TM", "Value": [clock]},
                "00080050": {"vr": "SH", "Value": [accession]},
                "00080090": _pn("Lindqvist^Sara"),
                "00081030": {"vr": "LO", "Value": [description]},
                "00100010": _pn(name),
                "00100020": {"vr": "LO", "Value": [patient]},
                "00100030": {"vr": "DA", "Value": ["19600101"]},
                "00100040": {"vr": "CS", "Value": ["F" if i % 2 else "M"]},
                "0020000D": {"vr": "UI", "Value": [uid]},
                "00200010": {"vr": "SH", "Value": [str(i)]},
            }),
        })
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(studies.insert(), study_rows)
        conn.execute(series.insert(), series_rows)
        conn.exec_driver_sql("ANALYZE")
    engine.dispose()
    return len(series_rows), time.perf_counter() - started


def _verify(path: str, body: bytes) -> int:
    """Check every returned dataset against the query; return how many there were."""
    if body[:2] == b"\x1f\x8b":
        body = gzip.decompress(body)
    datasets = json.loads(body)
    query = dict(part.split("=", 1) for part in path.partition("?")[2].split("&") if part)

    def first(ds: dict[str, Any], tag: str) -> Any:
        return (ds.get(tag, {}).get("Value") or [None])[0]

    for ds in datasets:
        if "PatientID" in query and first(ds, "00100020") != query["PatientID"]:
            raise AssertionError(f"{path}: a result of another patient")
        if "StudyDate" in query:
            lo, hi = query["StudyDate"].split("-")
            if not lo <= str(first(ds, "00080020")) <= hi:
                raise AssertionError(f"{path}: a result outside the date range")
        if "ModalitiesInStudy" in query and query["ModalitiesInStudy"] not in ds["00080061"]["Value"]:
            raise AssertionError(f"{path}: a result without the modality")
    if "PatientID" in query:
        if len(datasets) != _studies_per_patient()[query["PatientID"]]:
            raise AssertionError(f"{path}: {len(datasets)} results, not all of the patient's studies")
    elif "/metadata" in path:
        if len(datasets) not in (1, 200):
            raise AssertionError(f"{path}: {len(datasets)} instances")
    elif len(datasets) != 100:
        raise AssertionError(f"{path}: {len(datasets)} results, expected the limit of 100")
    return len(datasets)


def run() -> Report:
    started = time.perf_counter()
    report = header("B5", "QIDO-RS on 100,000 studies (SQLite) and series metadata, through NGINX")
    ct = ct_series()
    slide = wsi()
    ct_study, ct_series_uid, _ = uids(ct[0])
    wsi_study, wsi_series_uid, _ = uids(slide)
    rng = random.Random(11)
    with run_dir("b5") as var:
        (var / "stack").mkdir()
        n_series, seconds = fill_catalog(var / "stack" / "catalog.db")
        report.say(f"catalog filled: {STUDIES:,} studies, {n_series:,} series in {seconds:.1f} s")
        with running_stack(var / "stack") as stack:
            for files in (ct, [slide]):
                stack.stow(files)
            client = Client(stack.url)
            auth = {**stack.api_headers, "Accept": "application/dicom+json"}
            gzip = {**auth, "Accept-Encoding": "gzip"}

            def patient() -> str:
                return f"/dicomweb/studies?PatientID={_patient(rng.randrange(STUDIES))}&limit=100"

            def month() -> str:
                first = EPOCH + timedelta(days=rng.randrange(DAYS - 31))
                last = first + timedelta(days=30)
                return f"/dicomweb/studies?StudyDate={first:%Y%m%d}-{last:%Y%m%d}&limit=100"

            def modality() -> str:
                return f"/dicomweb/studies?ModalitiesInStudy={rng.choice(MODALITIES[:9])}&limit=100"

            kinds = {
                "PatientID exact": (patient, auth, SAMPLES),
                "StudyDate range (1 month)": (month, auth, SAMPLES),
                "ModalitiesInStudy": (modality, auth, SAMPLES),
                "series metadata, CT (200 instances)": (
                    lambda: f"/dicomweb/studies/{ct_study}/series/{ct_series_uid}/metadata", gzip, METADATA_SAMPLES),
                "series metadata, WSI": (
                    lambda: f"/dicomweb/studies/{wsi_study}/series/{wsi_series_uid}/metadata", gzip,
                    METADATA_SAMPLES),
            }
            timings: dict[str, list[float]] = {k: [] for k in kinds}
            results: dict[str, list[int]] = {k: [] for k in kinds}
            sizes: dict[str, int] = {}
            for name, (make, headers, _) in kinds.items():  # one untimed request each: routes and caches warm
                status, body, _ = client.get(quote(make(), safe="/?=&-"), headers)
                if status != 200:
                    raise AssertionError(f"{name}: {status} {body[:200]!r}")
            for i in range(SAMPLES):
                for name, (make, headers, count) in kinds.items():
                    if i >= count:
                        continue
                    path = quote(make(), safe="/?=&-")
                    status, body, took = client.get(path, headers)
                    if status != 200:
                        raise AssertionError(f"{name}: {status} {body[:200]!r}")
                    timings[name].append(took)
                    sizes[name] = len(body)
                    results[name].append(_verify(path, body))
            client.close()

    for name, values in timings.items():
        p50, p95 = percentile(values, 50) * 1000, percentile(values, 95) * 1000
        found = results[name]
        extra = f"results per answer min {min(found)}, max {max(found)}, all checked"
        if "metadata" in name:
            extra += f"; body {sizes[name]:,} bytes gzip-encoded"
        report.say(f"{name}: p50 {p50:.2f} ms, p95 {p95:.2f} ms over {len(values)} requests; {extra}")
        report.check(f"{name}: p50 (ms)", p50, "< 20 ms", p50 < 20.0)
    return timed(report, started)


if __name__ == "__main__":
    main(run)
