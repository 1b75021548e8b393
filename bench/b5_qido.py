"""B5: QIDO-RS on N studies (100,000 by default, up to 1,000,000) on SQLite and PostgreSQL, series metadata, and
the CT's STOW-RS rate on an empty catalog against the full one, through NGINX + auth with the API key.

``python -m bench.b5_qido --studies 1000000 [--backend sqlite|postgresql] [--quick]``

The catalog is filled directly (bulk INSERTs through the tables of ``gateway/catalog/schema.py``, after the
Alembic migrations, 20,000 studies a transaction): N studies of 0.4 N patients over 25 years, 1-3 series each
with ModalitiesInStudy computed as the catalog computes it, and study/series ``attrs`` shaped like ingest's QIDO
attributes. The run says how long the fill took and how big the catalog is. Two stacks then run side by side on
the same database server: one on the full catalog, one on an empty one; the 200-slice CT is stored into each,
alternating which goes first (the same fresh series in both), so the rate at 0 and at N studies is compared in
the same run. The 32,000-frame WSI is stored into the full one too. Queries, interleaved, 200 each (50 with
``--quick``), ``limit=100``, each with values drawn at random: a StudyInstanceUID (one primary key: the floor
any QIDO request costs on this machine in this run, printed for reference), PatientID exact, StudyDate one month, one
ModalitiesInStudy, PatientName prefix (``DOE*`` and the like, in random letter case: PN matches
case-insensitively), AccessionNumber exact, the study list paged deep (``limit=100&offset=10000``); plus the
series metadata of the CT and of the WSI with ``Accept-Encoding: gzip`` as browsers send it. Every answer is
checked against the order the fill knows: the exact page of studies (UIDs in order), not just its size.
Target: p50 < 20 ms each.
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import gzip
import json
import random
import time
from array import array
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

from bench.common import (
    BenchSkip,
    BenchStack,
    Client,
    Report,
    ct_series,
    header,
    main,
    median,
    percentile,
    run_dir,
    running_stack,
    timed,
    uids,
    wsi,
)

STUDIES = 100_000
CHUNK = 20_000
SAMPLES = 200
QUICK_SAMPLES = 50
METADATA_SAMPLES = 100
DEEP_OFFSET = 10_000
CT_SEEDS = (21, 22)  # the CT series of B4 (cached): each round stores one into both stacks
MODALITIES = ["CT", "MR", "CR", "DX", "US", "MG", "PT", "NM", "XA", "SM", "SR", "OT"]
WEIGHTS = [20, 15, 15, 10, 10, 8, 5, 4, 4, 3, 3, 3]
FAMILY = ["Doe", "Müller", "García", "O'Brien", "Nguyen", "Kowalski", "Johansson", "Rossi", "Okafor", "Tanaka"]
GIVEN = ["Jane", "Hans", "María", "Seán", "Lan", "Anna", "Erik", "Giulia", "Chinedu", "Yuki", "Claire", "Robert"]
# ASCII prefixes that pick out exactly one family (a non-ASCII pattern would fold with Python on SQLite)
PREFIXES = {"DOE": 0, "GAR": 2, "NGU": 4, "KOW": 5, "JOH": 6, "ROS": 7, "OKA": 8, "TAN": 9}
EPOCH = date(2000, 1, 1)
DAYS = 9_125
UID_BASE = 10**12


def _uid(i: int) -> str:
    return f"2.25.{UID_BASE + i}"


def _index(uid: str) -> int | None:
    """The synthetic study's number, None for a study stored through STOW during the run."""
    head, _, tail = uid.rpartition(".")
    return int(tail) - UID_BASE if head == "2.25" and tail.isdigit() and int(tail) >= UID_BASE else None


def _pn(value: str) -> dict[str, object]:
    return {"vr": "PN", "Value": [{"Alphabetic": value}]}


@dataclass
class Synthetic:
    """What the fill wrote, kept to check answers: per study its day and modalities (bit mask), and the
    studies in QIDO order (StudyDate descending, then StudyInstanceUID)."""

    studies: int
    patients: int
    days: array[int]
    modalities: array[int]
    order: list[int]
    keys: list[int]  # -day of each entry of ``order`` (ascending), for bisect

    def patient(self, i: int) -> str:
        return f"PAT{(i * 7_919) % self.patients:07d}"

    def patient_studies(self, patient: str) -> set[int]:
        residue = int(patient[3:])
        inverse = pow(7_919, -1, self.patients)
        first = residue * inverse % self.patients
        return set(range(first, self.studies, self.patients))

    def first_where(self, test: Callable[[int], bool], start: int = 0, stop: int | None = None,
                    count: int = 100) -> list[int]:
        found = []
        for i in self.order[start:stop]:
            if test(i):
                found.append(i)
                if len(found) == count:
                    break
        return found

    def in_month(self, low: int, high: int) -> list[int]:
        """The first 100 studies (QIDO order) whose day is in [low, high]."""
        start = bisect.bisect_left(self.keys, -high)
        stop = bisect.bisect_right(self.keys, -low)
        return self.order[start:min(stop, start + 100)]


def _rows(n: int, patients: int, seed: int, days: array[int], mods: array[int]) -> Iterator[
        tuple[list[dict[str, Any]], list[dict[str, Any]]]]:
    """Study and series rows, CHUNK studies at a time (memory stays flat for any N)."""
    rng = random.Random(seed)
    now = int(time.time())
    for base in range(0, n, CHUNK):
        study_rows, series_rows = [], []
        for i in range(base, min(n, base + CHUNK)):
            uid = _uid(i)
            patient = f"PAT{(i * 7_919) % patients:07d}"
            name = f"{FAMILY[i % len(FAMILY)]}^{GIVEN[(i // len(FAMILY)) % len(GIVEN)]}"
            offset = rng.randrange(DAYS)
            days.append(offset)
            day = (EPOCH + timedelta(days=offset)).strftime("%Y%m%d")
            clock = f"{rng.randrange(7, 19):02d}{rng.randrange(60):02d}{rng.randrange(60):02d}"
            accession = f"A{i:08d}"
            description = f"{rng.choice(['CHEST', 'ABDOMEN', 'HEAD', 'KNEE', 'BREAST', 'SKIN'])} STUDY"
            n_series = rng.choice((1, 1, 2, 2, 2, 3))
            modalities = rng.choices(MODALITIES, WEIGHTS, k=n_series)
            mods.append(sum(1 << MODALITIES.index(m) for m in set(modalities)))
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
                "referring_physician_name": "Lindqvist^Sara",
                "modalities_in_study": "\\".join(sorted(set(modalities))),
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
        yield study_rows, series_rows


def _copy(conn: Any, table: Any, rows: list[dict[str, Any]]) -> None:
    """PostgreSQL COPY of ``rows`` into ``table`` (columns named by the rows' keys), inside conn's transaction."""
    columns = list(rows[0])
    raw = conn.connection.driver_connection
    with raw.cursor() as cursor, cursor.copy(f"COPY {table.name} ({', '.join(columns)}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row([row[c] for c in columns])


def fill_catalog(url: str, n: int, seed: int = 5) -> tuple[Synthetic, int, float]:
    """Create the schema with the migrations and bulk-insert n synthetic studies and their series; returns
    (what was written, series rows, seconds)."""
    import sqlalchemy as sa

    from gateway.catalog import Catalog
    from gateway.catalog.engine import engine_url
    from gateway.catalog.schema import series, studies

    started = time.perf_counter()
    catalog = Catalog(url)
    catalog.migrate()
    catalog.close()
    patients = max(1, n * 2 // 5)
    days, mods = array("H"), array("H")
    engine = sa.create_engine(engine_url(url))
    n_series = 0
    postgres = engine.dialect.name == "postgresql"
    with engine.connect() as conn:
        if not postgres:
            conn.exec_driver_sql("PRAGMA synchronous=OFF")  # a throwaway benchmark catalog
            conn.commit()
        for study_rows, series_rows in _rows(n, patients, seed, days, mods):
            with conn.begin():
                for table, rows in ((studies, study_rows), (series, series_rows)):
                    if postgres:  # COPY with the table's columns: an INSERT per row costs 10x as much
                        _copy(conn, table, rows)
                    else:
                        conn.execute(table.insert(), rows)
            n_series += len(series_rows)
        conn.commit()
    if postgres:  # VACUUM cannot run in a transaction; it also sets the visibility map (index-only scans)
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("VACUUM ANALYZE")
    else:
        with engine.connect() as conn:
            conn.exec_driver_sql("ANALYZE")
            conn.commit()
    engine.dispose()
    seconds = time.perf_counter() - started
    order = sorted(range(n), key=lambda i: (-days[i], i))
    synthetic = Synthetic(n, patients, days, mods, order, [-days[i] for i in order])
    return synthetic, n_series, seconds


def catalog_bytes(url: str) -> int:
    import sqlalchemy as sa

    from gateway.catalog.engine import engine_url

    if url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///"))
        return sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))
    engine = sa.create_engine(engine_url(url))
    try:
        with engine.connect() as conn:
            return int(conn.exec_driver_sql("SELECT pg_database_size(current_database())").scalar_one())
    finally:
        engine.dispose()


# ---------------------------------------------------------------------------------------------------------------
# Queries and their checks


def _first(ds: dict[str, Any], tag: str) -> Any:
    return (ds.get(tag, {}).get("Value") or [None])[0]


def _page(path: str, datasets: list[dict[str, Any]], expected: list[int], stored: int) -> None:
    """The synthetic studies of the answer must be exactly the expected ones in order; up to ``stored``
    studies stored through STOW during the run may sit among them (or push the last ones off the page)."""
    got = [_index(str(_first(ds, "0020000D"))) for ds in datasets]
    synthetic = [i for i in got if i is not None]
    if len(got) - len(synthetic) > stored or synthetic != expected[: len(synthetic)] \
            or len(synthetic) < len(expected) - stored:
        raise AssertionError(f"{path}: not the expected page ({synthetic[:5]}... vs {expected[:5]}...)")


def _verify(data: Synthetic, stored: int, kind: str, path: str, params: dict[str, str], body: bytes) -> int:
    """Check an answer against what the fill wrote; return how many datasets it held."""
    if body[:2] == b"\x1f\x8b":
        body = gzip.decompress(body)
    datasets = json.loads(body)
    if kind == "patient":
        want = data.patient_studies(params["PatientID"])
        got = {_index(str(_first(ds, "0020000D"))) for ds in datasets}
        if got != want or any(_first(ds, "00100020") != params["PatientID"] for ds in datasets):
            raise AssertionError(f"{path}: {len(got)} studies, not exactly the patient's {len(want)}")
    elif kind == "month":
        low, high = (int(v) for v in params["days"].split("-"))
        _page(path, datasets, data.in_month(low, high), stored)
        lo, hi = params["StudyDate"].split("-")
        if any(not lo <= str(_first(ds, "00080020")) <= hi for ds in datasets):
            raise AssertionError(f"{path}: a result outside the date range")
    elif kind == "modality":
        bit = 1 << MODALITIES.index(params["ModalitiesInStudy"])
        _page(path, datasets, data.first_where(lambda i: bool(data.modalities[i] & bit)), stored)
        if any(params["ModalitiesInStudy"] not in ds["00080061"]["Value"] for ds in datasets):
            raise AssertionError(f"{path}: a result without the modality")
    elif kind == "name":
        family = PREFIXES[params["PatientName"].rstrip("*").upper()]
        _page(path, datasets, data.first_where(lambda i: i % len(FAMILY) == family), stored)
        prefix = params["PatientName"].rstrip("*").lower()
        if any(not str(_first(ds, "00100010")["Alphabetic"]).lower().startswith(prefix) for ds in datasets):
            raise AssertionError(f"{path}: a result whose name does not start with {prefix!r}")
    elif kind == "one":
        found = [_index(str(_first(ds, "0020000D"))) for ds in datasets]
        if [_uid(i) for i in found if i is not None] != [params["StudyInstanceUID"]]:
            raise AssertionError(f"{path}: {found} instead of the one study")
    elif kind == "accession":
        found = [_index(str(_first(ds, "0020000D"))) for ds in datasets]
        if found != [int(params["AccessionNumber"][1:])]:
            raise AssertionError(f"{path}: {found} instead of the one study with that accession number")
    elif kind == "deep":
        page = [_index(str(_first(ds, "0020000D"))) for ds in datasets]
        # STOW-stored studies earlier in the order shift the page by at most ``stored``
        if not any(page == data.order[DEEP_OFFSET - k: DEEP_OFFSET - k + 100] for k in range(stored + 1)):
            raise AssertionError(f"{path}: not studies {DEEP_OFFSET:,}-{DEEP_OFFSET + 99:,} of the QIDO order")
    elif len(datasets) not in (1, 200):
        raise AssertionError(f"{path}: {len(datasets)} instances")
    return len(datasets)


def _queries(data: Synthetic, rng: random.Random) -> dict[str, Callable[[], tuple[str, dict[str, str]]]]:
    def patient() -> tuple[str, dict[str, str]]:
        return "patient", {"PatientID": data.patient(rng.randrange(data.studies))}

    def month() -> tuple[str, dict[str, str]]:
        low = rng.randrange(DAYS - 31)
        first, last = EPOCH + timedelta(days=low), EPOCH + timedelta(days=low + 30)
        return "month", {"StudyDate": f"{first:%Y%m%d}-{last:%Y%m%d}", "days": f"{low}-{low + 30}"}

    def modality() -> tuple[str, dict[str, str]]:
        return "modality", {"ModalitiesInStudy": rng.choice(MODALITIES[:9])}

    def name() -> tuple[str, dict[str, str]]:
        prefix = rng.choice(list(PREFIXES))
        prefix = rng.choice((prefix, prefix.lower(), prefix.capitalize()))
        return "name", {"PatientName": prefix + "*"}

    def accession() -> tuple[str, dict[str, str]]:
        return "accession", {"AccessionNumber": f"A{rng.randrange(data.studies):08d}"}

    def deep() -> tuple[str, dict[str, str]]:
        return "deep", {"offset": str(DEEP_OFFSET)}

    def floor() -> tuple[str, dict[str, str]]:
        return "one", {"StudyInstanceUID": _uid(rng.randrange(data.studies))}

    return {"floor: StudyInstanceUID (one primary key)": floor, "PatientID exact": patient,
            "StudyDate one month": month, "ModalitiesInStudy": modality,
            "PatientName prefix (DOE*)": name, "AccessionNumber": accession,
            f"study list, limit=100&offset={DEEP_OFFSET}": deep}


def _qido_path(params: dict[str, str]) -> str:
    shown = {k: v for k, v in params.items() if k != "days"}
    return "/dicomweb/studies?" + "&".join(f"{k}={quote(v, safe='*-')}" for k, v in {**shown, "limit": "100"}.items())


# ---------------------------------------------------------------------------------------------------------------
# One backend


@contextlib.contextmanager
def _databases(backend: str, var: Path) -> Iterator[tuple[str, str]]:
    """(full catalog URL, empty catalog URL) on the backend."""
    if backend == "sqlite":
        (var / "full").mkdir()
        (var / "empty").mkdir()
        yield f"sqlite:///{var / 'full' / 'catalog.db'}", f"sqlite:///{var / 'empty' / 'catalog.db'}"
        return
    from gateway.tools import postgres

    if not postgres.available():
        raise BenchSkip(f"PostgreSQL is not installed (no initdb in {postgres.PG_BIN}): apt-get install postgresql")
    import psycopg

    with postgres.private_postgres() as server:
        admin = f"host={server.host} port={server.port} user={server.user} dbname=postgres"
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute('CREATE DATABASE "b5_full"')
            conn.execute('CREATE DATABASE "b5_empty"')
        yield server.url("b5_full"), server.url("b5_empty")


def _stow_rates(report: Report, label: str, full: BenchStack, empty: BenchStack, rounds: int) -> None:
    rates: dict[str, list[float]] = {"0 studies": [], "full": []}
    for r, seed in enumerate(CT_SEEDS[:rounds]):
        files = ct_series(seed=seed)
        pair = [("0 studies", empty), ("full", full)]
        for name, stack in pair if r % 2 == 0 else reversed(pair):
            seconds, size, _ = stack.stow(files)
            rates[name].append(size / 1e6 / seconds)
    at_zero, at_full = median(rates["0 studies"]), median(rates["full"])
    report.say(f"{label}: CT STOW-RS (200 slices) at 0 studies {at_zero:.0f} MB/s, at full catalog "
               f"{at_full:.0f} MB/s (median of {rounds} alternating rounds)")
    report.check(f"{label}: CT STOW rate, full / empty catalog", at_full / at_zero, ">= 0.8 (no degradation)",
                 at_full / at_zero >= 0.8)


def _run_backend(report: Report, backend: str, n: int, samples: int, rounds: int) -> None:
    label = f"{backend}, {n:,} studies"
    ct = ct_series(seed=CT_SEEDS[0])
    slide = wsi()
    ct_study, ct_series_uid, _ = uids(ct[0])
    wsi_study, wsi_series_uid, _ = uids(slide)
    rng = random.Random(11)
    with run_dir(f"b5-{backend}") as var, _databases(backend, var) as (full_url, empty_url):
        data, n_series, seconds = fill_catalog(full_url, n)
        report.say(f"{label}: catalog filled with {n:,} studies, {n_series:,} series in {seconds:.0f} s "
                   f"({n / seconds:,.0f} studies/s); {catalog_bytes(full_url) / 1e6:,.0f} MB")
        with running_stack(var / "full", database_url=full_url) as stack, \
                running_stack(var / "empty", database_url=empty_url) as empty:
            _stow_rates(report, label, stack, empty, rounds)
            stack.stow([slide])
            stored = rounds + 1
            client = Client(stack.url)
            auth = {**stack.api_headers, "Accept": "application/dicom+json"}
            zipped = {**auth, "Accept-Encoding": "gzip"}
            queries = _queries(data, rng)
            metadata = {
                "series metadata, CT (200 instances)": f"/dicomweb/studies/{ct_study}/series/{ct_series_uid}/metadata",
                "series metadata, WSI": f"/dicomweb/studies/{wsi_study}/series/{wsi_series_uid}/metadata",
            }
            names = [*queries, *metadata]
            timings: dict[str, list[float]] = {k: [] for k in names}
            results: dict[str, list[int]] = {k: [] for k in names}
            sizes: dict[str, int] = {}
            params: dict[str, str]
            for i in range(-1, samples):  # round -1: one untimed request each, routes and caches warm
                for name in names:
                    if name in metadata:
                        if i >= min(samples, METADATA_SAMPLES):
                            continue
                        kind, params, path, headers = "metadata", {}, metadata[name], zipped
                    else:
                        kind, params = queries[name]()
                        path, headers = _qido_path(params), auth
                    status, body, took = client.get(path, headers)
                    if status != 200:
                        raise AssertionError(f"{label}, {name}: {status} {body[:200]!r}")
                    count = _verify(data, stored, kind, path, params, body)
                    if i >= 0:
                        timings[name].append(took)
                        results[name].append(count)
                        sizes[name] = len(body)
            client.close()
    for name, values in timings.items():
        p50, p95 = percentile(values, 50) * 1000, percentile(values, 95) * 1000
        found = results[name]
        extra = f"results per answer {min(found)}-{max(found)}, all checked"
        if "metadata" in name:
            extra += f"; body {sizes[name]:,} bytes gzip-encoded"
        report.say(f"{label}, {name}: p50 {p50:.2f} ms, p95 {p95:.2f} ms over {len(values)} requests; {extra}")
        if name.startswith("floor"):  # what any QIDO request costs here and now (NGINX, auth, Flask, one row)
            continue
        report.check(f"{label}, {name}: p50 (ms)", p50, "< 20 ms", p50 < 20.0)


def run(studies: int = STUDIES, backends: tuple[str, ...] = ("sqlite", "postgresql"), quick: bool = False) -> Report:
    started = time.perf_counter()
    report = header("B5", f"QIDO-RS on {studies:,} studies ({' and '.join(backends)}), series metadata, "
                          "STOW rate at 0 and at N studies")
    for backend in backends:
        try:
            _run_backend(report, backend, studies, QUICK_SAMPLES if quick else SAMPLES, 1 if quick else 2)
        except BenchSkip as skip:
            report.check(f"{backend}: QIDO", float("nan"), "< 20 ms", None, str(skip))
    return timed(report, started)


def cli() -> Report:
    parser = argparse.ArgumentParser(prog="python -m bench.b5_qido", description=__doc__.split("\n\n")[0])
    parser.add_argument("--studies", type=int, default=STUDIES, help="studies in the catalog (default 100,000)")
    parser.add_argument("--backend", choices=("sqlite", "postgresql", "both"), default="both")
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_SAMPLES} requests per query, one STOW round")
    args = parser.parse_args()
    if args.studies < DEEP_OFFSET + 100:
        parser.error(f"--studies must be at least {DEEP_OFFSET + 100:,} (the deep page is offset {DEEP_OFFSET:,})")
    backends = ("sqlite", "postgresql") if args.backend == "both" else (args.backend,)
    return run(args.studies, backends, args.quick)


if __name__ == "__main__":
    main(cli)
