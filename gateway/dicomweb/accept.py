"""Accept negotiation per PS3.18 8.7: media ranges with quoted or unquoted ``type`` and ``transfer-syntax``
parameters, q-values, comma lists; the ``accept`` query parameter wins over the header; 406 when nothing fits.
We never transcode: an offer names the stored transfer syntax, and ``transfer-syntax=*`` accepts it. An offer of a
stored derivative (``explicit_only``) matches only a media range that names its transfer syntax, so a client that
did not ask for it never receives it."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from gateway.errors import NotAcceptable


@dataclass(frozen=True)
class MediaRange:
    media_type: str
    params: dict[str, str] = field(default_factory=dict)
    q: float = 1.0


@dataclass(frozen=True)
class Offer:
    """A representation we can produce: ``multipart`` True means multipart/related with parts of ``part_type``."""

    part_type: str
    transfer_syntax: str
    multipart: bool
    explicit_only: bool = False  # a derivative: only for a media range naming this transfer syntax
    star_too: bool = False  # ...or ``transfer-syntax=*`` (a deployment setting)

    @property
    def part_content_type(self) -> str:
        if self.part_type in ("application/dicom", "application/octet-stream") or self.part_type.startswith(
            ("image/", "video/")
        ):
            return f"{self.part_type}; transfer-syntax={self.transfer_syntax}"
        return self.part_type

    @property
    def media_range(self) -> str:
        """The offer as a client names it in an Accept: ``multipart/related; type="image/jpeg";
        transfer-syntax=...`` or the part's own Content-Type."""
        if not self.multipart:
            return self.part_content_type
        _, _, syntax = self.part_content_type.partition("; ")
        return f'multipart/related; type="{self.part_type}"' + (f"; {syntax}" if syntax else "")


def answered_as(offers: list[Offer]) -> str:
    """What a 406 says (RFC 9110 15.5.7: the representations there are, so the client can choose): each offer as
    a client names it, once, in the order offered."""
    names = list(dict.fromkeys(offer.media_range for offer in offers))
    listed = names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"
    return f"this resource is answered as {listed}"


def _split_outside_quotes(value: str, sep: str) -> list[str]:
    parts: list[str] = []
    current: list[str] = []
    quoted = False
    for char in value:
        if char == '"':
            quoted = not quoted
        if char == sep and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


# The 406's first words, before what the resource is answered as (``answered_as``).
NO_MATCH = "none of the accepted media types can be produced from the stored data (no transcoding)"

# Names of frame media types from before PS3.18 registered them, still sent by clients (dicomweb-client lists both
# for RLE and JPEG-LS frames): read as the registered name, which is what the answer's Content-Type then says.
_LEGACY_NAMES = {"image/x-dicom-rle": "image/dicom-rle", "image/x-jls": "image/jls"}


# RFC 9110 12.4.2: qvalue = ( "0" [ "." 0*3DIGIT ] ) / ( "1" [ "." 0*3("0") ] ); and ".2", the "0" left out, as
# Java's HttpURLConnection sends by default (`*; q=.2, */*; q=.2`): refusing that would refuse every answer to it.
_QVALUE = re.compile(r"0(?:\.[0-9]{0,3})?|1(?:\.0{0,3})?|\.[0-9]{1,3}")


def _standard(media_type: str) -> str:
    return _LEGACY_NAMES.get(media_type, media_type)


def parse_accept(value: str) -> list[MediaRange]:
    """Media ranges in preference order (q descending, then as written; ``q=0`` ones, "not acceptable", last).
    Malformed entries are skipped."""
    ranges: list[tuple[float, int, MediaRange]] = []
    for index, item in enumerate(_split_outside_quotes(value, ",")):
        pieces = _split_outside_quotes(item, ";")
        # A space inside type/subtype can only be the "+" of a structured suffix (`application/dicom+json`) that a
        # query string read as a form turned into one: RFC 3986 and the RFC 6570 expansion PS3.18 8.3 uses keep
        # "+" as "+", and no media type holds a space.
        media_type = _standard(pieces[0].strip().lower().replace(" ", "+"))
        if "/" not in media_type:
            continue
        params: dict[str, str] = {}
        q = 1.0
        for piece in pieces[1:]:
            name, _, raw = piece.strip().partition("=")
            name = name.strip().lower()
            raw = raw.strip()
            if len(raw) >= 2 and raw[0] == raw[-1] == '"':
                raw = raw[1:-1]
            if name == "q":
                # RFC 9110 12.4.2's qvalue, or malformed: a refusal, as "abc" always was. `q=2` and `q=1.5` were
                # weighed 1, `q=0.5555` 0.5555: each is as malformed as "abc" (and NaN, which compared unequal to
                # its own range's q)
                q = float(raw) if _QVALUE.fullmatch(raw) else 0.0
            elif name:
                params[name] = _standard(raw.lower().replace(" ", "+")) if name == "type" else raw  # "+" as above
        ranges.append((-q, index, MediaRange(media_type, params, q)))
    return [r for _, _, r in sorted(ranges, key=lambda t: (t[0], t[1]))]


def _matches(media_range: MediaRange, offer: Offer, default_part: str) -> bool:
    ts = media_range.params.get("transfer-syntax")
    if ts is not None and ts != "*" and ts != offer.transfer_syntax:
        return False
    if offer.explicit_only and ts != offer.transfer_syntax and not (offer.star_too and ts == "*"):
        return False
    if media_range.media_type == "multipart/related":
        if not offer.multipart:
            return False
        part = media_range.params.get("type", default_part)
        return part in (offer.part_type, "*/*") or (
            part.endswith("/*") and offer.part_type.startswith(part[:-1])
        )
    if offer.multipart:  # multipart/* is every multipart subtype (RFC 9110 12.5.1), as */* is every type
        return media_range.media_type in ("*/*", "multipart/*")
    if media_range.media_type == "*/*":
        return True
    if media_range.media_type.endswith("/*"):
        return offer.part_type.startswith(media_range.media_type[:-1])
    return media_range.media_type == offer.part_type


def _specificity(media_range: MediaRange) -> tuple[bool, bool, int]:
    """RFC 9110 12.5.1's order: a type over ``type/*`` over ``*/*``, and more parameters over fewer."""
    major, _, minor = media_range.media_type.partition("/")
    return major != "*", minor != "*", len(media_range.params)


def _quality(ranges: list[MediaRange], offer: Offer, default_part: str) -> float:
    """The offer's q: that of the most specific range matching it (RFC 9110 12.5.1: ``application/dicom+json,
    */*;q=0`` accepts DICOM JSON and nothing else); a refusal wins a tie."""
    matching = [r for r in ranges if _matches(r, offer, default_part)]
    if not matching:
        return 0.0
    top = max(_specificity(r) for r in matching)
    qs = [r.q for r in matching if _specificity(r) == top]
    return 0.0 if 0.0 in qs else max(qs)


def negotiate(accept: str, offers: list[Offer], default_on_tie: bool = False) -> Offer:
    """The best offer for ``accept`` (the first offer that is not ``explicit_only`` is the default for a missing
    header or ``*/*``). With ``default_on_tie`` the default is also taken whenever its q equals the best one's:
    RFC 9110 gives ranges of one q no order, and PS3.18 names a default rendered type (image/jpeg), so Java's
    ``text/html, image/gif, image/jpeg, *; q=.2`` gets the JPEG and not the first named GIF."""
    if not offers:
        raise NotAcceptable("no representation is available")
    ranges = parse_accept(accept) if accept.strip() else []
    default = next((o for o in offers if not o.explicit_only), offers[0])
    if not ranges:
        return default
    default_part = default.part_type
    # RFC 9110 12.4.2: q=0 means "not acceptable": an offer whose most specific range says so is never chosen, and a
    # header of q=0 ranges only accepts nothing (it was read as no header at all, which accepts anything). The
    # ranges come best first, so the first offer taken at its own q is one of the best. Each offer's q is found
    # once: found again for every range it matched, a hostile Accept of 2,000 ranges held a thread 9 s.
    qualities = [_quality(ranges, offer, default_part) for offer in offers]
    default_q = qualities[offers.index(default)]
    for media_range in ranges:
        if media_range.q == 0:
            break
        for offer, q in zip(offers, qualities, strict=True):
            if q == media_range.q and _matches(media_range, offer, default_part):
                return default if default_on_tie and default_q == q else offer
    # it said only "cannot be produced from the stored data": a client asking a study as application/dicom, or a
    # JPEG 2000 frame as image/jpeg, was not told what it could have
    raise NotAcceptable(f"{NO_MATCH}: {answered_as(offers)}")
