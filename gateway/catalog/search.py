"""QIDO-RS over the catalog: a parsed ``QidoQuery`` becomes one SELECT (filters, scope, order, page), and each
row becomes a DICOM JSON object.

Scope is applied in SQL (``WHERE study_uid IN ...``) so a page is never post-filtered.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.ext.compiler import compiles

from gateway import fastjson
from gateway.catalog.engine import unicode_fold
from gateway.catalog.schema import instances, series, studies
from gateway.dicomweb.qido import LEVELS, RETURN_ATTRS, Match, QidoQuery, like_pattern
from gateway.scope import Scope


class unicode_lower(sa.sql.functions.GenericFunction[str]):  # noqa: N801 - SQL function naming
    """Unicode lower-casing: ``lower()`` on PostgreSQL, a registered Python function on SQLite."""

    type = sa.String()
    inherit_cache = True


@compiles(unicode_lower)
def _lower_default(element: unicode_lower, compiler: Any, **kw: Any) -> str:
    return f"lower({compiler.process(element.clauses, **kw)})"


@compiles(unicode_lower, "sqlite")
def _lower_sqlite(element: unicode_lower, compiler: Any, **kw: Any) -> str:
    return f"unicode_lower({compiler.process(element.clauses, **kw)})"


# A PN prefix matching many studies is cheaper to find by reading the study order index and filtering (about one
# entry in N/matches qualifies); matching few, by reading the prefix's range of the name index and sorting what it
# holds. The order index carries patient_name (migration 0008): an entry costs about a fifth of a match read by
# name and sorted (1,000,000 studies on SQLite: ~0.5 against ~2 us). For the first k = offset + limit studies among
# M matches of N, the order reads ~k N / M entries and the name path M matches: the order wins above
# M = sqrt(k N / 5) (~4,500 for a first page of 100 at 1,000,000 studies, ~630 at 20,000; bench/b5_qido.py).
ORDER_ENTRY_RATIO = 5
# Counting a prefix's matches costs ~0.2 us each: never count more than this (a deep page of a wide prefix)
WIDE_PREFIX_MAX = 20_000
# From this offset on, a study page is found by its UIDs first (build_select)
DEEP_OFFSET = 1_000
# PN columns with an index on lower(column) (migration 0007)
_FOLDED_INDEX = {"patient_name"}


def _prefix_bounds(match: Match) -> tuple[str, str] | None:
    """For an ASCII PN wildcard match on an indexed column: the range of its literal prefix, folded
    ('doe%' -> 'doe' <= x < 'dof'), else None. Strings compare by code point on SQLite (BINARY collation of UTF-8),
    so incrementing the last character of the prefix bounds every string that starts with it."""
    if match.attr.kind != "pn" or match.op != "like" or match.attr.column not in _FOLDED_INDEX:
        return None
    pattern = match.values[0].lower()
    if not pattern.isascii():
        return None
    prefix = []
    chars = iter(pattern)
    for char in chars:
        if char in "%_":
            break
        prefix.append(next(chars, "") if char == "\\" else char)
    text = "".join(prefix)
    if not text or text[-1] == "\x7f":
        return None
    return text, text[:-1] + chr(ord(text[-1]) + 1)


def wide_bound(conn: Connection, query: QidoQuery) -> int:
    """The number of matches above which a PN prefix is read by the study order (see ORDER_ENTRY_RATIO). N is
    SQLite's largest rowid of studies: one index probe, and deleted studies only make it an overestimate."""
    studies_seen = conn.execute(sa.select(sa.func.max(sa.literal_column("rowid"))).select_from(studies)).scalar()
    return min(WIDE_PREFIX_MAX, math.isqrt((studies_seen or 0) * (query.offset + query.limit) // ORDER_ENTRY_RATIO))


def wide_prefixes(conn: Connection, query: QidoQuery) -> frozenset[int]:
    """SQLite only: the positions in ``query.matches`` of PN prefix matches whose range of the lower(name) index
    holds more than ``wide_bound`` studies (counted in the index, up to that bound). SQLite turns such a LIKE into
    a range of the index whatever it holds, and its planner does not weigh the LIMIT: sorting the 100,000 studies
    of "doe%" in a million costs 300 ms, where reading the study order and filtering finds a page in a few.
    PostgreSQL needs none of this: it weighs the LIMIT with its statistics."""
    wide: set[int] = set()
    bound = None
    for position, match in enumerate(query.matches):
        bounds = _prefix_bounds(match)
        if bounds is None:
            continue
        assert match.attr.column is not None
        if bound is None:
            bound = wide_bound(conn, query)
        folded = sa.func.lower(_TABLES[match.attr.level].c[match.attr.column])
        hits = sa.select(sa.literal(1)).where(folded >= bounds[0], folded < bounds[1]).limit(bound + 1)
        if conn.execute(sa.select(sa.func.count()).select_from(hits.subquery())).scalar_one() > bound:
            wide.add(position)
    return frozenset(wide)


# --- SQL ----------------------------------------------------------------------------------------------------

_TABLES = {0: studies, 1: series, 2: instances}


def _modalities_clause(codes: tuple[str, ...], scope: Scope | None) -> sa.ColumnElement[bool]:
    """ModalitiesInStudy: a study matches when one of its series' modalities matches one of ``codes``."""
    exact = [code for code in codes if "*" not in code and "?" not in code]
    patterns = [code for code in codes if code not in exact]
    if scope is None or scope.series is None:
        if not patterns:
            # The study row's sorted, backslash-joined list ("CT\\SR"), which the study order index carries: a
            # page is found by reading that index alone (migration 0008), never probing the series of each study.
            framed = sa.literal("\\").concat(studies.c.modalities_in_study).concat("\\")
            return sa.or_(*(framed.contains(f"\\{code}\\", autoescape=True) for code in exact))
    # A series scope sees the modalities of its series only, and a wildcard (C*) matches one series' modality,
    # never a stretch of the joined list: probe the series (ix_series_modality_study).
    probe = series.alias("modality_probe")
    matches: list[sa.ColumnElement[bool]] = [probe.c.modality.in_(exact)] if exact else []
    matches += [probe.c.modality.like(like_pattern(code), escape="\\") for code in patterns]
    inner = sa.select(probe.c.series_uid).where(probe.c.study_uid == studies.c.study_uid, sa.or_(*matches))
    if scope is not None and scope.series is not None:
        inner = inner.where(probe.c.series_uid.in_(sorted(scope.series)))
    return inner.exists()


class request_item_match(sa.sql.expression.ColumnElement[bool]):  # noqa: N801 - SQL construct naming
    """Whether an item of the series' stored Request Attributes Sequence (its row's QIDO attributes, the DICOM
    JSON QIDO returns) passes every test of ``tests``: (item attribute tag, "eq" or "like", value), the
    sequence matching of PS3.4 C.2.2.2.6. Written per dialect (below): each has its own JSON functions. Only
    series queries and the instance queries that join series reach it, so the series table is in the FROM."""

    type = sa.Boolean()
    inherit_cache = False

    def __init__(self, tests: tuple[tuple[str, str, str], ...]) -> None:
        self.tests = tests


def _item_tests(element: request_item_match, compiler: Any, value_of: str, **kw: Any) -> str:
    """The WHERE of one item: each test on ``value_of`` (SQL of the item attribute's first value, a format string
    of its tag), the value bound. The tags are ours (qido's two item keys), never the client's text."""
    tests = []
    for tag, op, value in element.tests:
        assert tag.isalnum(), tag
        first = sa.literal_column(value_of.format(tag), sa.String())
        bound = sa.bindparam(None, value, type_=sa.String())
        tests.append(compiler.process(first.like(bound, escape="\\") if op == "like" else first == bound, **kw))
    return " AND ".join(tests)


@compiles(request_item_match)
def _request_item_postgresql(element: request_item_match, compiler: Any, **kw: Any) -> str:
    tests = _item_tests(element, compiler, "(item.value -> '{}' -> 'Value' ->> 0)", **kw)
    source = "json_array_elements(CAST(series.attrs AS json) -> '00400275' -> 'Value') AS item(value)"
    return f"EXISTS (SELECT 1 FROM {source} WHERE {tests})"  # noqa: S608 - constants, bound values (_item_tests)


@compiles(request_item_match, "sqlite")
def _request_item_sqlite(element: request_item_match, compiler: Any, **kw: Any) -> str:
    tests = _item_tests(element, compiler, "json_extract(item.value, '$.\"{}\".Value[0]')", **kw)
    return f"EXISTS (SELECT 1 FROM json_each(series.attrs, '$.\"00400275\".Value') AS item WHERE {tests})"  # noqa: S608


def _clause(match: Match, scope: Scope | None, unindexed: bool = False) -> sa.ColumnElement[bool]:
    attr = match.attr
    if attr.kind == "modalities":
        return _modalities_clause(match.values, scope)
    if attr.kind == "request":
        return request_item_match(match.values)
    assert attr.column is not None
    column = _TABLES[attr.level].c[attr.column]
    if match.op == "in":
        return column.in_(match.values) if len(match.values) > 1 else column == match.values[0]
    if match.op == "range":
        low, high = match.values
        parts = []
        if low is not None:
            parts.append(column >= low)
        if high is not None:
            parts.append(column <= high)
        return sa.and_(*parts)
    if match.op == "datetime":
        # the dates bound the span as a plain range does (the date index still drives it); the times count on the
        # first and last day only, and a study with no time is matched on its date alone
        time_attr, low_date, low_time, high_date, high_time = match.values
        assert time_attr.column is not None
        time = _TABLES[time_attr.level].c[time_attr.column]
        parts = []
        if low_date is not None:
            parts += [column >= low_date, sa.or_(column > low_date, time >= low_time, time.is_(None))]
        if high_date is not None:
            parts += [column <= high_date, sa.or_(column < high_date, time <= high_time, time.is_(None))]
        return sa.and_(*parts)
    if attr.kind == "pn":
        # PN matches case-insensitively on every backend (PS3.4 C.2.2.2.1 allows it; users expect it). An
        # ASCII pattern needs only the database's built-in lower(); a non-ASCII one needs Unicode folding,
        # which on SQLite is a (slower) Python function.
        pattern = unicode_fold(match.values[0])  # İ folds to an ASCII i: the query's own letters decide
        folded: sa.ColumnElement[str] = sa.func.lower(column) if match.values[0].isascii() else unicode_lower(column)
        patterns = final_sigmas(pattern)
        if match.op == "like":
            if unindexed:  # not the indexed expression any more (wide_prefixes): the order index drives the query
                folded = folded.concat("")
            likes = [folded.like(each, escape="\\") for variant in patterns for each in _like_spellings(variant)]
            return likes[0] if len(likes) == 1 else sa.or_(*likes)
        return folded.in_([spelling for each in patterns for spelling in pn_spellings(each)])
    if match.op == "like":
        return column.like(match.values[0], escape="\\")
    return column == match.values[0]


def final_sigmas(pattern: str) -> list[str]:
    """A lower-cased Greek pattern in each way a lower-cased name may end its words: a small sigma ending a word is
    ς where the name was written in small letters, σ where it was written in capitals (PostgreSQL's lower(), and
    Python's before a "^": ``ΔΙΟΝΥΣΙΟΣ^ΝΙΚΟΣ`` is ``διονυσιοσ^νικος``). Both are kept on the column side, so its
    index serves; at most four words give variants."""
    pattern = pattern.replace("ς", "σ")
    ends = [i for i, c in enumerate(pattern) if c == "σ" and not pattern[i + 1 : i + 2].isalpha()][:4]
    variants = [pattern]
    for i in ends:
        variants += [v[:i] + "ς" + v[i + 1 :] for v in variants]
    return variants


def pn_spellings(name: str) -> list[str]:
    """The ways a file may write the person name ``name`` (one component group): its trailing empty components and
    their delimiters may be left out or written (PS3.5 6.2), so ``DOE^JOHN`` is also stored as ``DOE^JOHN^^^``, the
    way many modalities write it. A group has five components, so at most four delimiters: each spelling is one
    entry of the lower(name) index."""
    name = name.rstrip("^ ")
    return [name + "^" * extra for extra in range(max(1, 5 - name.count("^")))]


def _like_spellings(pattern: str) -> list[str]:
    """A PN wildcard pattern in each spelling ``pn_spellings`` gives a name: ``*^JOHN`` finds ``DOE^JOHN^^^``. One
    ending with ``*`` already matches whatever delimiters follow."""
    return [pattern] if pattern.endswith("%") and not pattern.endswith("\\%") else pn_spellings(pattern)


def _order_index_filters(match: Match) -> bool:
    """Whether the study order index alone can evaluate ``match`` (the columns migration 0008 added to it)."""
    return match.attr.kind == "modalities" or (
        match.attr.kind == "pn" and match.op == "like" and match.attr.column in _FOLDED_INDEX
    )


def build_select(query: QidoQuery, scope: Scope | None, unindexed: frozenset[int] = frozenset()) -> sa.Select[Any]:
    """One SELECT with the filters, the scope, a deterministic order, limit and offset. ``unindexed``: positions
    of PN prefix matches that must not use their index (``wide_prefixes``)."""
    depth = LEVELS[query.level]
    columns: list[Any] = [c.label(f"st_{c.name}") for c in studies.c]
    if depth >= 1:
        columns += [c.label(f"se_{c.name}") for c in series.c]
    if depth == 2:
        wanted = ["sop_uid", "sop_class_uid", "instance_number", "number_of_frames", "attrs"]
        if query.include_all or query.include:
            wanted.append("metadata")
        columns += [instances.c[name].label(f"in_{name}") for name in wanted]
    elif query.include or query.include_all:
        columns.append(_one_instance_metadata(depth, scope).label("in_metadata"))
    stmt = _filtered(sa.select(*columns).select_from(_source(query)), query, scope, unindexed)
    order: list[Any] = [sa.nulls_last(studies.c.study_date.desc()), studies.c.study_uid]
    if depth >= 1:
        order += [sa.nulls_last(series.c.series_number.asc()), series.c.series_uid]
    if depth == 2:
        order += [sa.nulls_last(instances.c.instance_number.asc()), instances.c.sop_uid]
    if depth == 0 and (query.offset >= DEEP_OFFSET or any(_order_index_filters(m) for m in query.matches)):
        # Deep pages, ModalitiesInStudy and PatientName wildcards: find the page's UIDs first, then read just
        # those rows. The order index holds study_date, study_uid, modalities_in_study and patient_name
        # (migration 0008), so the studies skipped or filtered out are never read (PostgreSQL scans the index
        # only; SQLite's plain form would read each row it filters).
        page = stmt.with_only_columns(studies.c.study_uid).order_by(*order).limit(query.limit).offset(query.offset)
        stmt = sa.select(*columns).where(studies.c.study_uid.in_(page.scalar_subquery()))
        return stmt.order_by(*order)
    return stmt.order_by(*order).limit(query.limit).offset(query.offset)


def _one_instance_metadata(depth: int, scope: Scope | None) -> sa.ScalarSelect[Any]:
    """The metadata of one instance of the row's study (``depth`` 0) or series (1) that the scope lets the client
    see: where a study- or series-level includefield the stored attributes lack is looked up. One instance
    stands for its study or series (the attributes of those levels are the same in each of its instances); no
    order, so the index finds it without reading the others. It is one of the study's own patient: an older
    catalog may hold another patient's instance in a study (``other_patient_id``, migration 0013), whose patient
    values (PatientWeight, PatientComments...) a study's or a series' answer must never carry next to the study's
    patient; where no instance of that patient is visible (a series of the other patient's only), the attribute
    is left out."""
    inner = sa.select(instances.c.metadata).where(
        instances.c.study_uid == studies.c.study_uid, instances.c.other_patient_id.is_(None)
    )
    if depth == 1:
        inner = inner.where(instances.c.series_uid == series.c.series_uid)
    if scope is not None and scope.series is not None:
        inner = inner.where(instances.c.series_uid.in_(sorted(scope.series)))
    return inner.limit(1).scalar_subquery()


def build_count(query: QidoQuery, scope: Scope | None, unindexed: frozenset[int] = frozenset()) -> sa.Select[Any]:
    """How many rows ``build_select`` would find without its limit and offset (the QIDO "additional results")."""
    return _filtered(sa.select(sa.func.count()).select_from(_source(query)), query, scope, unindexed)


def _source(query: QidoQuery) -> Any:
    """The tables a query of ``query.level`` reads: studies, series joined to them, or instances joined to both."""
    depth = LEVELS[query.level]
    if depth == 0:
        return studies
    if depth == 1:
        return series.join(studies, series.c.study_uid == studies.c.study_uid)
    return instances.join(series, instances.c.series_uid == series.c.series_uid).join(
        studies, instances.c.study_uid == studies.c.study_uid
    )


def _filtered(stmt: sa.Select[Any], query: QidoQuery, scope: Scope | None, unindexed: frozenset[int]) -> sa.Select[Any]:
    """``stmt`` with the query's UIDs, its matches and the credential's scope as WHERE clauses."""
    if query.study_uid is not None:
        stmt = stmt.where(studies.c.study_uid == query.study_uid)
    if query.series_uid is not None:
        stmt = stmt.where(series.c.series_uid == query.series_uid)
    for position, match in enumerate(query.matches):
        stmt = stmt.where(_clause(match, scope, position in unindexed))
    if scope is not None:
        stmt = stmt.where(studies.c.study_uid.in_(sorted(scope.studies)))
        if scope.series is not None and LEVELS[query.level] >= 1:
            stmt = stmt.where(series.c.series_uid.in_(sorted(scope.series)))
    return stmt


# --- DICOM JSON ---------------------------------------------------------------------------------------------


def _without_bulk(dataset: dict[str, Any]) -> dict[str, Any]:
    return {
        tag: element
        for tag, element in dataset.items()
        if not (isinstance(element, dict) and ("BulkDataURI" in element or "InlineBinary" in element))
    }


_PREFIX = {0: "st_", 1: "se_", 2: "in_"}
# Transfer Syntax UID (0002,0010) is File Meta, no attribute of the data set a QIDO match is; PS3.18 answers the
# stored syntax as Available Transfer Syntax UID (0008,3002). An instance-level includefield that names it gets that
# value all the same: Google's ez-wsi-dicomweb asks for it (as Google's archive answers it) and opens no slide
# without it ("DICOM tag 00020010 is missing")
_TRANSFER_SYNTAX, _AVAILABLE_TRANSFER_SYNTAX = "00020010", "00083002"
# computed columns that override whatever the stored attributes say
_COUNTS = {
    "00201206": "st_num_series",
    "00201208": "st_num_instances",
    "00201209": "se_num_instances",
    "00280008": "in_number_of_frames",
}
_FLAT, _COUNT, _MODALITIES = 0, 1, 2


def _fillers(level: int) -> tuple[tuple[str, str, str, int], ...]:
    """What the return attributes of ``level`` take from the row, worked out once (shape_row runs per row):
    (tag, VR, row key, how): a count or ModalitiesInStudy always from the catalog, any other attribute with a
    column from that column when the stored attributes lack it."""
    out = []
    for attr in RETURN_ATTRS[level]:
        if attr.tag in _COUNTS:
            out.append((attr.tag, attr.vr, _COUNTS[attr.tag], _COUNT))
        elif attr.kind == "modalities":
            out.append((attr.tag, attr.vr, "st_modalities_in_study", _MODALITIES))
        elif attr.column is not None:
            out.append((attr.tag, attr.vr, _PREFIX[level] + attr.column, _FLAT))
    return tuple(out)


_FILLERS = {level: _fillers(level) for level in RETURN_ATTRS}


def output_levels(query: QidoQuery) -> list[int]:
    """The query level, plus each parent level the path did not fix (PS3.18 10.6.3.3: a series query without a
    study returns the study attributes too)."""
    depth = LEVELS[query.level]
    levels = [depth]
    if depth == 2 and query.series_uid is None:
        levels.append(1)
    if depth >= 1 and query.study_uid is None:
        levels.append(0)
    return levels


def _private_creator(tag: str) -> str | None:
    """The Private Creator element that reserves a private data element's block (PS3.5 7.8.1: ``gggg,xxee`` is
    reserved by ``gggg,00xx``), which PS3.18 10.6.3.3 returns with a private element an includefield names: its
    value alone says nothing (``0009,1001`` is whatever the creator of block 10 says it is)."""
    if int(tag[3], 16) % 2 == 0 or int(tag[4:6], 16) < 0x10:
        return None
    return f"{tag[:4]}00{tag[4:6]}"


def shape_row(query: QidoQuery, row: Mapping[str, Any]) -> dict[str, Any]:
    """A result row as a DICOM JSON object. For each of ``output_levels``: the stored QIDO attributes of that
    level (ingest chose them), then any return attribute still missing from its flat column (empty element
    when unknown); counts and ModalitiesInStudy always from the catalog; the parents' UIDs; then
    includefields, looked up in the stored attributes of every level and, for instances, in the instance
    metadata. Keys come out sorted (tag order, as PS3.18 F.2 lists them)."""
    depth = LEVELS[query.level]
    stored = [fastjson.loads(row[_PREFIX[level] + "attrs"] or "{}") for level in range(depth + 1)]
    result: dict[str, Any] = {}
    for level in output_levels(query):
        result.update(stored[level])
        for tag, vr, key, how in _FILLERS[level]:
            value = row[key]
            if how == _COUNT:
                if tag == "00280008" and not value:  # no pixel data: no frames to count, and 0 is no valid value
                    result.pop(tag, None)
                    continue
                result[tag] = {"vr": "IS", "Value": [int(value)]}
            elif how == _MODALITIES:
                result[tag] = {"vr": "CS", "Value": [p for p in value.split("\\") if p]} if value else {"vr": "CS"}
            elif tag in result:
                continue
            elif value is None or value == "":
                result[tag] = {"vr": vr}
            elif vr == "PN":
                result[tag] = {"vr": "PN", "Value": [{"Alphabetic": value}]}
            else:
                result[tag] = {"vr": vr, "Value": [value]}
        if level != 1:
            result["00080056"] = {"vr": "CS", "Value": ["ONLINE"]}
    result["0020000D"] = {"vr": "UI", "Value": [row["st_study_uid"]]}
    if depth >= 1:
        result["0020000E"] = {"vr": "UI", "Value": [row["se_series_uid"]]}
    if query.include_all or query.include:
        metadata: dict[str, Any] = {}
        if row.get("in_metadata"):
            metadata = _without_bulk(fastjson.loads(row["in_metadata"]))
        sources = [*reversed(stored), metadata]
        if depth < 2:  # one instance stands for its study or series only in the attributes of that level
            # imported here: it loads pydicom's dictionary, which the catalog package must not (records.py)
            from gateway.dicom.qido_attrs import INCLUDABLE_SERIES_TAGS, INCLUDABLE_STUDY_TAGS

            includable = INCLUDABLE_STUDY_TAGS if depth == 0 else INCLUDABLE_SERIES_TAGS
            sources[-1] = {tag: element for tag, element in metadata.items() if tag in includable}
        if query.include_all:  # all of this level's attributes: those a named includefield gets too (PatientAge)
            for attrs in sources:
                for tag, element in attrs.items():
                    result.setdefault(tag, element)
        for tag in sorted(query.include | {creator for tag in query.include if (creator := _private_creator(tag))}):
            if tag not in result:
                found = next((attrs[tag] for attrs in sources if tag in attrs), None)
                if found is not None:
                    result[tag] = found
        if depth == 2 and _TRANSFER_SYNTAX in query.include and _AVAILABLE_TRANSFER_SYNTAX in result:
            result[_TRANSFER_SYNTAX] = result[_AVAILABLE_TRANSFER_SYNTAX]
    return dict(sorted(result.items()))
