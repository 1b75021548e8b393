"""The PHI / data-sovereignty policy: a TOML file, loaded and validated once at start-up.

Every mistake is a ``ConfigError("DICOMGW_PHI_POLICY", ...)`` that names the offending key, and unknown keys
are errors too: a typo in a security policy must stop the gateway, not silently weaken it. See
``examples/phi-policy.toml`` for a commented example and ``docs/phi.md`` for the semantics.

Rules are evaluated in order; the first whose ``match`` fits the upload wins, else ``[default]``. Match values
are exact strings or globs (``*``, ``?``, ``[...]``, case-sensitive), or a list of them (any may match). Keys:
``tenant``, ``region``, ``source``, ``sub`` (from the upload context), ``phi`` (bool: did the scan find PHI)
and ``tags.<Keyword>`` (top-level element values; a missing element matches as the empty string).

Over 400 lines on purpose: it is the policy file's one schema, each key validated beside its meaning (the pixel
cleaning keys included), so a reader checks a key and its error message in one place.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, Literal

from pydicom.datadict import tag_for_keyword

from gateway.errors import ConfigError
from gateway.hooks import UploadContext
from gateway.phi.pixels import Band, MatchMode, PixelAction, PixelOptions
from gateway.phi.profile import SUPPORTED_OPTIONS, UNSUPPORTED_OPTIONS

VARIABLE = "DICOMGW_PHI_POLICY"
RuleAction = Literal["reject", "quarantine", "deidentify", "allow", "route"]
ACTIONS: tuple[str, ...] = ("reject", "quarantine", "deidentify", "allow", "route")
CONTEXT_KEYS = ("tenant", "region", "source", "sub")
DATE_MODES = ("shift", "remove", "keep")
PIXEL_ACTIONS = ("clean", "review", "refuse")
MATCH_MODES = ("all", "identifiers")


def _fail(key: str, problem: str) -> ConfigError:
    return ConfigError(VARIABLE, f"{key}: {problem}")


@dataclass(frozen=True)
class Destination:
    name: str
    storage: str  # a storage URL, or "default" = DICOMGW_STORAGE_URL
    region: str
    identifiable_allowed: bool


@dataclass(frozen=True)
class Rule:
    id: str
    action: RuleAction
    destination: str | None = None
    # (key, patterns): context keys and "tags.<Keyword>"; any pattern of a key may match, every key must match
    match: tuple[tuple[str, tuple[str, ...]], ...] = ()
    phi: bool | None = None
    reason: str = ""
    # burned-in text in a de-identified file: mask it (clean), quarantine it with the regions (review), or
    # refuse the file as before (refuse)
    pixels: PixelAction = "refuse"
    pixels_match: MatchMode = "all"

    def matches(self, context: UploadContext, tags: Mapping[str, str], phi: bool) -> bool:
        if self.phi is not None and self.phi != phi:
            return False
        for key, patterns in self.match:
            if key.startswith("tags."):
                value = tags.get(key[5:], "")
            else:
                value = getattr(context, key, None) or ""
            if not any(fnmatchcase(value, pattern) for pattern in patterns):
                return False
        return True


@dataclass(frozen=True)
class DeidOptions:
    options: frozenset[str] = frozenset()  # enabled PS3.15 option columns (SUPPORTED_OPTIONS)
    dates: str = (
        "remove"  # "shift" (= rtnLongModifDatesOpt), "remove" (basic profile), "keep" (= rtnLongFullDatesOpt)
    )
    max_shift_days: int = 365


@dataclass(frozen=True)
class Retention:
    """How many days an instance lives after it was stored (``gateway.retention``): by the tenant of its upload
    first, then by the destination the policy routed it to, then ``days``; None anywhere means kept until
    deleted."""

    days: int | None = None
    destinations: Mapping[str, int] = field(default_factory=dict)
    tenants: Mapping[str, int] = field(default_factory=dict)

    def days_for(self, tenant: str | None, destination: str | None) -> int | None:
        if tenant is not None and tenant in self.tenants:
            return self.tenants[tenant]
        if destination is not None and destination in self.destinations:
            return self.destinations[destination]
        return self.days

    @property
    def configured(self) -> bool:
        return self.days is not None or bool(self.destinations) or bool(self.tenants)


MAX_RETENTION_DAYS = 36500


@dataclass(frozen=True)
class Policy:
    version: str
    destinations: Mapping[str, Destination] = field(default_factory=dict)
    rules: tuple[Rule, ...] = ()
    default: Rule = Rule(id="default", action="reject")
    deidentify: DeidOptions = DeidOptions()
    # (private creator, odd group, element low byte) known to carry no PHI
    private_safe: frozenset[tuple[str, int, int]] = frozenset()
    on_unreadable: Literal["reject", "quarantine"] = "reject"
    on_deidentify_failure: Literal["reject", "quarantine"] = "reject"
    pixels: PixelOptions = PixelOptions()
    retention: Retention = Retention()

    @property
    def tag_keywords(self) -> frozenset[str]:
        """Top-level keywords whose values the rules look at (the scanner reads only these)."""
        return frozenset(
            key[5:]
            for rule in (*self.rules, self.default)
            for key, _ in rule.match
            if key.startswith("tags.")
        )

    @property
    def needs_key(self) -> bool:
        return any(rule.action == "deidentify" for rule in (*self.rules, self.default))

    @property
    def needs_ocr(self) -> bool:
        return any(rule.pixels != "refuse" for rule in (*self.rules, self.default))

    def select(self, context: UploadContext, tags: Mapping[str, str], phi: bool, *, reviewed: bool = False) -> Rule:
        """The first rule that matches, else ``[default]``. ``reviewed``: a reviewer released the file, which is the
        review a ``quarantine`` rule asks for: such rules are passed over (the default is returned as it is)."""
        for rule in self.rules:
            if rule.matches(context, tags, phi) and not (reviewed and rule.action == "quarantine"):
                return rule
        return self.default

    def storage_url(self, destination: str, default_url: str) -> str:
        """The storage URL of a destination ("default" resolves to the gateway's own storage)."""
        storage = self.destinations[destination].storage
        return default_url if storage == "default" else storage

    def is_private_safe(self, creator: str, tag: int) -> bool:
        return (creator, tag >> 16, tag & 0xFF) in self.private_safe


BASIC = Policy(version="basic")
"""What ``scan_file(path)`` uses without a policy: the Basic Profile, no options, no private whitelist."""


def _check_keys(table: Mapping[str, Any], where: str, allowed: tuple[str, ...]) -> None:
    for key in table:
        if key not in allowed:
            prefix = f"{where}." if where else ""
            raise _fail(f"{prefix}{key}", f"unknown key (expected one of: {', '.join(allowed)})")


def _table(raw: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(raw, Mapping):
        raise _fail(where, "must be a table")
    return raw


def _str(raw: Any, where: str) -> str:
    if not isinstance(raw, str) or not raw:
        raise _fail(where, "must be a non-empty string")
    return raw


def _bool(raw: Any, where: str) -> bool:
    if not isinstance(raw, bool):
        raise _fail(where, "must be true or false")
    return raw


def _destinations(raw: Any) -> dict[str, Destination]:
    result: dict[str, Destination] = {}
    for name, body in _table(raw, "destinations").items():
        where = f"destinations.{name}"
        body = _table(body, where)
        _check_keys(body, where, ("storage", "region", "identifiable_allowed"))
        for required in ("storage", "region", "identifiable_allowed"):
            if required not in body:
                raise _fail(f"{where}.{required}", "is required")
        storage = _str(body["storage"], f"{where}.storage")
        if storage != "default" and not storage.startswith(("file:///", "s3://")):
            raise _fail(f"{where}.storage", 'must be "default", file:///... or s3://...')
        result[name] = Destination(
            name=name,
            storage=storage,
            region=_str(body["region"], f"{where}.region"),
            identifiable_allowed=_bool(body["identifiable_allowed"], f"{where}.identifiable_allowed"),
        )
    return result


def _patterns(raw: Any, where: str) -> tuple[str, ...]:
    values = raw if isinstance(raw, list) else [raw]
    if not values or not all(isinstance(value, str) for value in values):
        raise _fail(where, "must be a string or a non-empty list of strings")
    return tuple(values)


def _rule(raw: Any, where: str, destinations: Mapping[str, Destination], is_default: bool) -> Rule:
    body = _table(raw, where)
    allowed: tuple[str, ...] = ("id", "action", "destination", "reason", "pixels", "pixels_match")
    allowed += () if is_default else ("match",)
    _check_keys(body, where, allowed)
    rule_id = _str(body.get("id", "default" if is_default else where), f"{where}.id")
    action = body.get("action")
    if action not in ACTIONS:
        raise _fail(f"{where}.action", f"must be one of {', '.join(ACTIONS)}")
    destination = body.get("destination")
    if action in ("allow", "route", "deidentify"):
        if destination is None:
            raise _fail(f"{where}.destination", f"is required for action {action!r}")
        if destination not in destinations:
            raise _fail(f"{where}.destination", f"no [destinations.{destination}] table")
        if action == "allow" and not destinations[destination].identifiable_allowed:
            raise _fail(
                f"{where}.destination",
                f"action 'allow' stores files as they are, but destination {destination!r} has "
                "identifiable_allowed = false (use 'deidentify' or 'route')",
            )
    elif destination is not None:
        raise _fail(f"{where}.destination", f"makes no sense with action {action!r}")
    match: list[tuple[str, tuple[str, ...]]] = []
    phi: bool | None = None
    for key, value in _table(body.get("match", {}), f"{where}.match").items():
        key_where = f"{where}.match.{key}"
        if key == "phi":
            phi = _bool(value, key_where)
        elif key in CONTEXT_KEYS:
            match.append((key, _patterns(value, key_where)))
        elif key.startswith("tags."):
            if tag_for_keyword(key[5:]) is None:
                raise _fail(key_where, f"{key[5:]!r} is not a DICOM keyword")
            match.append((key, _patterns(value, key_where)))
        else:
            raise _fail(
                key_where, f"unknown match key (expected {', '.join(CONTEXT_KEYS)}, phi or tags.<Keyword>)"
            )
    reason = body.get("reason", "")
    if not isinstance(reason, str):
        raise _fail(f"{where}.reason", "must be a string")
    pixels = body.get("pixels", "refuse")
    if pixels not in PIXEL_ACTIONS:
        raise _fail(f"{where}.pixels", f"must be one of {', '.join(PIXEL_ACTIONS)}")
    pixels_match = body.get("pixels_match", "all")
    if pixels_match not in MATCH_MODES:
        raise _fail(f"{where}.pixels_match", f"must be one of {', '.join(MATCH_MODES)}")
    for key in ("pixels", "pixels_match"):
        if key in body and action != "deidentify":
            raise _fail(f"{where}.{key}", f"applies to action 'deidentify' only, not {action!r}")
    return Rule(
        id=rule_id,
        action=action,
        destination=destination,
        match=tuple(match),
        phi=phi,
        reason=reason,
        pixels=pixels,
        pixels_match=pixels_match,
    )


def _deid(raw: Any, private_safe: bool) -> DeidOptions:
    body = _table(raw, "deidentify")
    _check_keys(body, "deidentify", ("dates", "max_shift_days") + SUPPORTED_OPTIONS + UNSUPPORTED_OPTIONS)
    options = set()
    for name in SUPPORTED_OPTIONS + UNSUPPORTED_OPTIONS:
        if name in body and _bool(body[name], f"deidentify.{name}"):
            if name in UNSUPPORTED_OPTIONS:
                raise _fail(f"deidentify.{name}", "is not supported (it needs pixel or overlay analysis)")
            options.add(name)
    dates = body.get("dates")
    if dates is None:
        dates = (
            "shift"
            if "rtnLongModifDatesOpt" in options
            else "keep"
            if "rtnLongFullDatesOpt" in options
            else "remove"
        )
    if dates not in DATE_MODES:
        raise _fail("deidentify.dates", f"must be one of {', '.join(DATE_MODES)}")
    # `dates` and the two date options say the same thing; where both are given they must agree.
    for name, mode in (("rtnLongModifDatesOpt", "shift"), ("rtnLongFullDatesOpt", "keep")):
        if name in body and (name in options) != (dates == mode):
            raise _fail(f"deidentify.{name}", f"contradicts dates = {dates!r}")
    options -= {"rtnLongModifDatesOpt", "rtnLongFullDatesOpt"}
    if dates == "shift":
        options.add("rtnLongModifDatesOpt")
    if dates == "keep":
        options.add("rtnLongFullDatesOpt")
    if "rtnSafePrivOpt" in body and not body["rtnSafePrivOpt"] and private_safe:
        raise _fail("deidentify.rtnSafePrivOpt", "is false but [private].safe lists elements")
    if private_safe:
        options.add("rtnSafePrivOpt")
    max_shift = body.get("max_shift_days", 365)
    if not isinstance(max_shift, int) or isinstance(max_shift, bool) or not 1 <= max_shift <= 36500:
        raise _fail("deidentify.max_shift_days", "must be an integer from 1 to 36500")
    return DeidOptions(options=frozenset(options), dates=dates, max_shift_days=max_shift)


def _private(raw: Any) -> frozenset[tuple[str, int, int]]:
    body = _table(raw, "private")
    _check_keys(body, "private", ("safe",))
    entries = body.get("safe", [])
    if not isinstance(entries, list):
        raise _fail("private.safe", "must be a list of { creator, element } tables")
    result = set()
    for index, entry in enumerate(entries):
        where = f"private.safe[{index}]"
        entry = _table(entry, where)
        _check_keys(entry, where, ("creator", "element"))
        creator = _str(entry.get("creator"), f"{where}.creator")
        element = _str(entry.get("element"), f"{where}.element").upper()
        # "0009,XX01": the element's low byte within whatever block the creator was given in the file
        group_text, _, elem_text = element.partition(",")
        try:
            if len(group_text) != 4 or len(elem_text) != 4 or not elem_text.startswith("XX"):
                raise ValueError(element)
            group, low = int(group_text, 16), int(elem_text[2:], 16)
        except ValueError:
            raise _fail(f"{where}.element", 'must look like "0009,xx01"') from None
        if group % 2 == 0 or group < 9:
            raise _fail(f"{where}.element", "the group must be an odd private group (0009 or above)")
        result.add((creator, group, low))
    return frozenset(result)


def _int(raw: Any, where: str, low: int, high: int) -> int:
    if not isinstance(raw, int) or isinstance(raw, bool) or not low <= raw <= high:
        raise _fail(where, f"must be an integer from {low} to {high}")
    return raw


def _extent(raw: Any, where: str) -> float:
    """Pixels (an integer >= 0) or a fraction of the image (a float from 0.0 to 1.0)."""
    if isinstance(raw, bool) or not isinstance(raw, int | float) or raw < 0 or (isinstance(raw, float) and raw > 1):
        raise _fail(where, "must be pixels (an integer >= 0) or a fraction (a float from 0.0 to 1.0)")
    return raw


def _band(raw: Any, where: str) -> Band:
    body = _table(raw, where)
    _check_keys(body, where, ("modality", "manufacturer", "model", "top", "height", "left", "width"))
    if "height" not in body:
        raise _fail(f"{where}.height", "is required")
    globs = {key: _str(body[key], f"{where}.{key}") for key in ("modality", "manufacturer", "model") if key in body}
    extents = {key: _extent(body[key], f"{where}.{key}") for key in ("top", "height", "left", "width") if key in body}
    return Band(**globs, **extents)  # type: ignore[arg-type]


def _pixels(raw: Any) -> PixelOptions:
    body = _table(raw, "pixels")
    _check_keys(body, "pixels", ("margin", "ocr_stride", "max_frames", "upscale", "bands"))
    bands = body.get("bands", [])
    if not isinstance(bands, list):
        raise _fail("pixels.bands", "must be an array of tables ([[pixels.bands]])")
    defaults = PixelOptions()
    return PixelOptions(
        margin=_int(body.get("margin", defaults.margin), "pixels.margin", 0, 64),
        ocr_stride=_int(body.get("ocr_stride", defaults.ocr_stride), "pixels.ocr_stride", 1, 1000),
        max_frames=_int(body.get("max_frames", defaults.max_frames), "pixels.max_frames", 1, 100000),
        upscale=_int(body.get("upscale", defaults.upscale), "pixels.upscale", 1, 4),
        bands=tuple(_band(band, f"pixels.bands[{i}]") for i, band in enumerate(bands)),
    )


def _choice(raw: Any, where: str, default: str) -> Any:
    value = default if raw is None else raw
    if value not in ("reject", "quarantine"):
        raise _fail(where, "must be 'reject' or 'quarantine'")
    return value


def parse_policy(data: Mapping[str, Any]) -> Policy:
    """Validate a parsed TOML document (tests pass dicts; ``load_policy`` reads the file)."""
    _check_keys(
        data,
        "",
        ("version", "options", "destinations", "rules", "default", "deidentify", "private", "pixels", "retention"),
    )
    if "version" not in data:
        raise _fail("version", "is required")
    version = data["version"]
    if not isinstance(version, str | int) or isinstance(version, bool) or str(version) == "":
        raise _fail("version", "must be a non-empty string or an integer")
    options = _table(data.get("options", {}), "options")
    _check_keys(options, "options", ("on_unreadable", "on_deidentify_failure"))
    destinations = _destinations(data.get("destinations", {}))
    raw_rules = data.get("rules", [])
    if not isinstance(raw_rules, list):
        raise _fail("rules", "must be an array of tables ([[rules]])")
    rules = tuple(_rule(raw, f"rules[{i}]", destinations, False) for i, raw in enumerate(raw_rules))
    ids = [rule.id for rule in rules]
    duplicates = sorted({rule_id for rule_id in ids if ids.count(rule_id) > 1})
    if duplicates:
        raise _fail("rules", f"duplicate rule ids: {', '.join(duplicates)}")
    default = (
        _rule(data["default"], "default", destinations, True)
        if "default" in data
        else Rule(id="default", action="reject", reason="no policy rule matched")
    )
    private_safe = _private(data.get("private", {}))
    return Policy(
        version=str(version),
        destinations=destinations,
        rules=rules,
        default=default,
        deidentify=_deid(data.get("deidentify", {}), bool(private_safe)),
        private_safe=private_safe,
        on_unreadable=_choice(options.get("on_unreadable"), "options.on_unreadable", "reject"),
        on_deidentify_failure=_choice(
            options.get("on_deidentify_failure"), "options.on_deidentify_failure", "reject"
        ),
        pixels=_pixels(data.get("pixels", {})),
        retention=_retention(data.get("retention", {}), destinations),
    )


def _retention(raw: Any, destinations: Mapping[str, Destination]) -> Retention:
    table = _table(raw, "retention")
    _check_keys(table, "retention", ("days", "destinations", "tenants"))
    days = _int(table["days"], "retention.days", 1, MAX_RETENTION_DAYS) if "days" in table else None
    by_destination = {
        name: _int(value, f"retention.destinations.{name}", 1, MAX_RETENTION_DAYS)
        for name, value in _table(table.get("destinations", {}), "retention.destinations").items()
    }
    unknown = sorted(set(by_destination) - set(destinations))
    if unknown:
        raise _fail("retention.destinations", f"no [destinations.{unknown[0]}] table")
    by_tenant = {
        name: _int(value, f"retention.tenants.{name}", 1, MAX_RETENTION_DAYS)
        for name, value in _table(table.get("tenants", {}), "retention.tenants").items()
    }
    return Retention(days, by_destination, by_tenant)


def loads_policy(text: str) -> Policy:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(VARIABLE, f"not valid TOML: {exc}") from None
    return parse_policy(data)


def load_policy(path: Path | str) -> Policy:
    try:
        # utf-8-sig: Notepad's "UTF-8 with BOM" was "not valid TOML: Invalid statement (at line 1, column 1)"
        text = Path(path).read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise ConfigError(VARIABLE, f"cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        # a file saved as Latin-1 or UTF-16 (an accent in a comment) stopped start-up with a traceback
        raise ConfigError(VARIABLE, f"{path} is not UTF-8 text (byte {exc.start}): save it as UTF-8") from None
    return loads_policy(text)
