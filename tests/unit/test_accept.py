"""gateway.dicomweb.accept: Accept parsing (q-values, quoted parameters, commas in quotes) and negotiation over the
offer lists the read path builds (frames, retrieve, bulkdata)."""

from __future__ import annotations

import pytest

from gateway.dicomweb.accept import MediaRange, Offer, negotiate, parse_accept
from gateway.errors import NotAcceptable

JPEG = "1.2.840.10008.1.2.4.50"
EXPLICIT = "1.2.840.10008.1.2.1"
NO_MATCH = "none of the accepted media types can be produced from the stored data (no transcoding)"
# the frames' 406 names each representation as an Accept names it (RFC 9110 15.5.7)
FRAMES_NO_MATCH = (
    f'{NO_MATCH}: this resource is answered as multipart/related; type="image/jpeg"; transfer-syntax={JPEG}, '
    f'multipart/related; type="application/octet-stream"; transfer-syntax={JPEG}, '
    f"image/jpeg; transfer-syntax={JPEG} or application/octet-stream; transfer-syntax={JPEG}"
)

# what Planner._frame_offers builds for a single JPEG frame
FRAME_OFFERS = [
    Offer("image/jpeg", JPEG, True),
    Offer("application/octet-stream", JPEG, True),
    Offer("image/jpeg", JPEG, False),
    Offer("application/octet-stream", JPEG, False),
]
# Planner._retrieve for one instance
RETRIEVE_OFFERS = [Offer("application/dicom", EXPLICIT, True), Offer("application/dicom", EXPLICIT, False)]
# Planner._bulkdata without and with a Range header
BULK_OFFERS = [Offer("application/octet-stream", EXPLICIT, True), Offer("application/octet-stream", EXPLICIT, False)]
BULK_RANGE_OFFERS = list(reversed(BULK_OFFERS))


# -- parse_accept --------------------------------------------------------------------------------------------------


def test_parse_orders_by_q_then_as_written() -> None:
    ranges = parse_accept("image/jpeg;q=0.5, application/dicom;q=0.9, */*;q=0.5, multipart/related")
    assert ranges == [
        MediaRange("multipart/related", {}, 1.0),
        MediaRange("application/dicom", {}, 0.9),
        MediaRange("image/jpeg", {}, 0.5),
        MediaRange("*/*", {}, 0.5),
    ]


def test_parse_quoted_and_unquoted_parameters() -> None:
    quoted = parse_accept('multipart/related; type="application/octet-stream"; transfer-syntax="*"')
    unquoted = parse_accept("multipart/related;type=application/octet-stream;transfer-syntax=*")
    expected = [MediaRange("multipart/related", {"type": "application/octet-stream", "transfer-syntax": "*"})]
    assert quoted == expected
    assert unquoted == expected


def test_parse_normalises_case_of_type_names_but_not_other_values() -> None:
    assert parse_accept('Multipart/Related; TYPE="Application/DICOM"; Transfer-Syntax=1.2.3; X=AbC') == [
        MediaRange("multipart/related", {"type": "application/dicom", "transfer-syntax": "1.2.3", "x": "AbC"})
    ]


def test_parse_commas_and_semicolons_inside_quotes() -> None:
    assert parse_accept('multipart/related; type="a/b,c"; x="1;2", text/plain') == [
        MediaRange("multipart/related", {"type": "a/b,c", "x": "1;2"}),
        MediaRange("text/plain"),
    ]


def test_parse_skips_malformed_and_puts_q_zero_last() -> None:
    assert parse_accept("garbage, , ;q=1, image/png;q=0, image/gif;q=abc, image/jp2;q=0.0, image/jpeg") == [
        MediaRange("image/jpeg"),
        MediaRange("image/png", {}, 0.0),
        MediaRange("image/gif", {}, 0.0),
        MediaRange("image/jp2", {}, 0.0),
    ]


@pytest.mark.parametrize("q", ["2", "1.5", "-1", "0.5555", "1.0001", "01", "+0.5", "0.5e0", "1e0", "inf", " ", ""])
def test_a_q_value_outside_rfc_9110s_grammar_is_refused_as_q_abc_is(q: str) -> None:
    """RFC 9110 12.4.2: ``qvalue = ( "0" [ "." 0*3DIGIT ] ) / ( "1" [ "." 0*3("0") ] )``. ``q=abc`` was a refusal
    (a 406 when nothing else is accepted) while ``q=2`` and ``q=1.5`` were weighed 1 and ``q=0.5555`` 0.5555: every
    value outside the grammar is now read as ``q=abc`` is."""
    json_offers = [Offer("application/dicom+json", "*", False), Offer("application/json", "*", False)]
    assert parse_accept(f"image/jpeg;q={q}") == parse_accept("image/jpeg;q=abc") == [MediaRange("image/jpeg", {}, 0.0)]
    with pytest.raises(NotAcceptable) as caught:
        negotiate(f"application/dicom+json;q={q}", json_offers)
    assert caught.value.detail == (
        f"{NO_MATCH}: this resource is answered as application/dicom+json or application/json"
    )
    # one more range: the malformed one no longer outranks it (q=2 took DICOM JSON over JSON at q=0.5)
    assert negotiate(f"application/dicom+json;q={q}, application/json;q=0.5", json_offers) == json_offers[1]


def test_q_values_inside_the_grammar_are_their_weights() -> None:
    """Each form the grammar allows, and ``.2``, the ``0`` left out, which Java's HttpURLConnection sends by default
    (``*; q=.2, */*; q=.2``): refused, it would have refused Java every answer but the types it names."""
    for q, weight in (("0", 0.0), ("0.", 0.0), ("0.5", 0.5), ("0.555", 0.555), ("0.000", 0.0), ("1", 1.0), ("1.", 1.0),
                      ("1.0", 1.0), ("1.000", 1.0), (".2", 0.2), (".125", 0.125), ('"0.3"', 0.3)):  # fmt: skip
        assert parse_accept(f"image/png;q={q}") == [MediaRange("image/png", {}, weight)], q


def test_parse_q_value_quoted_and_spaced() -> None:
    assert parse_accept(' image/png ; q="0.3" ,image/gif;q = 0.7') == [
        MediaRange("image/gif", {}, 0.7),
        MediaRange("image/png", {}, 0.3),
    ]


def test_parse_restores_the_plus_a_form_decoded_query_turned_into_a_space() -> None:
    """`?accept=application/dicom+json` read as a form arrives as "application/dicom json" (it was a 406): media
    types hold no space, and PS3.18 8.3 (RFC 6570) keeps "+" literal."""
    assert parse_accept("application/dicom json") == [MediaRange("application/dicom+json", {}, 1.0)]
    assert parse_accept('multipart/related; type="application/dicom xml"') == [
        MediaRange("multipart/related", {"type": "application/dicom+xml"}, 1.0)
    ]
    assert parse_accept(" application/dicom+json ; q=0.5") == [MediaRange("application/dicom+json", {}, 0.5)]


def test_parse_empty() -> None:
    assert parse_accept("") == []


# -- negotiate -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        ("", FRAME_OFFERS[0]),
        ("   ", FRAME_OFFERS[0]),
        ("*/*", FRAME_OFFERS[0]),
        ("multipart/related", FRAME_OFFERS[0]),
        ("multipart/related; type=image/jpeg", FRAME_OFFERS[0]),
        ("multipart/related; type=image/*", FRAME_OFFERS[0]),
        ('multipart/related; type="*/*"', FRAME_OFFERS[0]),
        ("multipart/related; type=application/octet-stream; transfer-syntax=*", FRAME_OFFERS[1]),
        (f'multipart/related; type="application/octet-stream"; transfer-syntax={JPEG}', FRAME_OFFERS[1]),
        ("image/*", FRAME_OFFERS[2]),
        ("image/jpeg", FRAME_OFFERS[2]),
        ("application/octet-stream", FRAME_OFFERS[3]),
        (f"application/octet-stream; transfer-syntax={JPEG}", FRAME_OFFERS[3]),
        ("application/octet-stream;q=0.5, image/jpeg", FRAME_OFFERS[2]),
        ("image/jpeg;q=0.4, application/octet-stream;q=0.8", FRAME_OFFERS[3]),
        ("text/html, image/jp2, application/octet-stream;q=0.1", FRAME_OFFERS[3]),
        ("garbage, image/png;q=0, */*;q=0.2", FRAME_OFFERS[0]),
    ],
)
def test_negotiate_frames(accept: str, expected: Offer) -> None:
    assert negotiate(accept, FRAME_OFFERS) == expected


@pytest.mark.parametrize(
    "accept",
    [
        f'multipart/related; type="application/octet-stream"; transfer-syntax={EXPLICIT}',
        f"image/jpeg; transfer-syntax={EXPLICIT}",
        "multipart/related; type=image/jp2",
        "image/png, text/html",
    ],
)
def test_negotiate_frames_not_acceptable(accept: str) -> None:
    with pytest.raises(NotAcceptable) as caught:
        negotiate(accept, FRAME_OFFERS)
    assert caught.value.detail == FRAMES_NO_MATCH
    assert caught.value.status == 406


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        ("", RETRIEVE_OFFERS[0]),
        ("*/*", RETRIEVE_OFFERS[0]),
        ("multipart/related", RETRIEVE_OFFERS[0]),
        ('multipart/related; type="application/dicom"', RETRIEVE_OFFERS[0]),
        (f"multipart/related; type=application/dicom; transfer-syntax={EXPLICIT}", RETRIEVE_OFFERS[0]),
        ("application/dicom", RETRIEVE_OFFERS[1]),
        ("application/*", RETRIEVE_OFFERS[1]),
        ("application/dicom; transfer-syntax=*", RETRIEVE_OFFERS[1]),
    ],
)
def test_negotiate_retrieve(accept: str, expected: Offer) -> None:
    assert negotiate(accept, RETRIEVE_OFFERS) == expected


@pytest.mark.parametrize(
    "accept",
    [
        "multipart/related; type=application/octet-stream",
        f"multipart/related; type=application/dicom; transfer-syntax={JPEG}",
        "application/dicom+json",
        "image/*",
    ],
)
def test_negotiate_retrieve_not_acceptable(accept: str) -> None:
    with pytest.raises(NotAcceptable):
        negotiate(accept, RETRIEVE_OFFERS)


def test_negotiate_bulkdata_default_depends_on_offer_order() -> None:
    assert negotiate("*/*", BULK_OFFERS) == BULK_OFFERS[0]
    assert negotiate("*/*", BULK_RANGE_OFFERS) == Offer("application/octet-stream", EXPLICIT, False)
    assert negotiate("application/octet-stream", BULK_OFFERS) == BULK_OFFERS[1]
    assert negotiate("multipart/related; type=application/octet-stream", BULK_RANGE_OFFERS) == BULK_OFFERS[0]


def test_q_zero_is_not_acceptable() -> None:
    """RFC 9110 12.4.2: q=0 means "not acceptable". A header of refusals only accepts nothing (a 406; it was read
    as no header, which sent the very type refused), and a refusal excludes what a wider range would accept."""
    with pytest.raises(NotAcceptable):
        negotiate("image/jpeg;q=0, application/octet-stream;q=0", FRAME_OFFERS)
    with pytest.raises(NotAcceptable):
        negotiate("application/dicom+json;q=0", [Offer("application/dicom+json", "", False)])
    with pytest.raises(NotAcceptable):  # the one image/* offer of a single frame is the refused image/jpeg
        negotiate("image/*;q=0.5, image/jpeg;q=0", FRAME_OFFERS)
    assert negotiate("image/*;q=0.5, image/jpeg;q=0, application/octet-stream;q=0.1", FRAME_OFFERS) == FRAME_OFFERS[3]


def test_a_more_specific_range_outranks_a_refusal_or_a_wider_range() -> None:
    """RFC 9110 12.5.1: the most specific range matching a type gives its q. ``application/dicom+json, */*;q=0``
    ("this and nothing else") was a 406: the wider refusal vetoed the type the client named."""
    json_offers = [Offer("application/dicom+json", "*", False), Offer("application/json", "*", False)]
    assert negotiate("application/dicom+json, */*;q=0", json_offers) == json_offers[0]
    assert negotiate("application/json, application/*;q=0", json_offers) == json_offers[1]
    assert negotiate("application/octet-stream, */*;q=0", FRAME_OFFERS) == FRAME_OFFERS[3]
    assert negotiate("image/jpeg, image/*;q=0", FRAME_OFFERS) == FRAME_OFFERS[2]
    # a wider range at q=1 does not lift the specific one's lower q: the other type is preferred
    assert negotiate("application/dicom+json;q=0.1, */*", json_offers) == json_offers[1]
    with pytest.raises(NotAcceptable):  # the specific refusal still wins over the wider acceptance
        negotiate("*/*, application/dicom+json;q=0, application/json;q=0", json_offers)
    with pytest.raises(NotAcceptable):  # equally specific: the refusal wins
        negotiate("image/jpeg, image/jpeg;q=0", [FRAME_OFFERS[2]])
    # a q that is no number (NaN included) is malformed: a refusal, as q=abc is
    assert parse_accept("image/jpeg;q=nan") == [MediaRange("image/jpeg", {}, 0.0)]
    assert negotiate("application/dicom+json;q=NaN, application/json;q=0.5", json_offers) == json_offers[1]


def test_multipart_star_is_any_multipart_answer() -> None:
    """RFC 9110 12.5.1: ``type/*`` is every subtype of the type, so ``multipart/*`` takes multipart/related (a 406
    before), and ``multipart/*;q=0, */*`` refuses it: the single part is sent (multipart was, the refusal unread)."""
    assert negotiate("multipart/*", FRAME_OFFERS) == FRAME_OFFERS[0]
    assert negotiate("multipart/*", RETRIEVE_OFFERS) == RETRIEVE_OFFERS[0]
    assert negotiate("multipart/*;q=0, */*", FRAME_OFFERS) == FRAME_OFFERS[2]
    assert negotiate("multipart/*;q=0, */*", RETRIEVE_OFFERS) == RETRIEVE_OFFERS[1]
    assert negotiate("multipart/*;q=0, */*", BULK_OFFERS) == BULK_OFFERS[1]
    assert negotiate("multipart/*;q=0.5, application/octet-stream;q=0.1", FRAME_OFFERS) == FRAME_OFFERS[0]
    with pytest.raises(NotAcceptable):
        negotiate("multipart/*", [FRAME_OFFERS[2], FRAME_OFFERS[3]])


def test_negotiate_without_offers() -> None:
    with pytest.raises(NotAcceptable) as caught:
        negotiate("*/*", [])
    assert caught.value.detail == "no representation is available"


def test_part_content_type() -> None:
    assert Offer("image/jpeg", JPEG, True).part_content_type == f"image/jpeg; transfer-syntax={JPEG}"
    assert Offer("video/mp4", "1.2.840.10008.1.2.4.102", True).part_content_type == (
        "video/mp4; transfer-syntax=1.2.840.10008.1.2.4.102"
    )
    assert Offer("application/dicom", EXPLICIT, False).part_content_type == (
        f"application/dicom; transfer-syntax={EXPLICIT}"
    )
    assert Offer("application/octet-stream", EXPLICIT, False).part_content_type == (
        f"application/octet-stream; transfer-syntax={EXPLICIT}"
    )
    assert Offer("application/dicom+json", EXPLICIT, False).part_content_type == "application/dicom+json"


def test_the_default_wins_a_tie_only_when_asked_to() -> None:
    """Rendered images (``default_on_tie``): ranges of one q have no order (RFC 9110 12.4.2), so PS3.18's default,
    the first offer, is taken whenever it is as acceptable as the best; elsewhere the first range named still
    decides, and a higher q always does."""
    images = [Offer("image/jpeg", "*", False), Offer("image/png", "*", False), Offer("image/gif", "*", False)]
    java = "text/html, image/gif, image/jpeg, *; q=.2, */*; q=.2"
    assert negotiate(java, images, default_on_tie=True).part_type == "image/jpeg"
    assert negotiate(java, images).part_type == "image/gif"
    assert negotiate("image/png, image/*", images, default_on_tie=True).part_type == "image/jpeg"
    assert negotiate("image/gif, image/jpeg;q=0.9", images, default_on_tie=True).part_type == "image/gif"
    assert negotiate("image/png, image/*;q=0.5", images, default_on_tie=True).part_type == "image/png"
    assert negotiate("*/*, image/jpeg;q=0", images, default_on_tie=True).part_type == "image/png"
    with pytest.raises(NotAcceptable):
        negotiate("image/jpeg;q=0", images, default_on_tie=True)


def test_negotiation_reads_each_range_a_bounded_number_of_times(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each offer's q was found again for every range matching it: quadratic in the ranges, so a 34 KB Accept of
    2,000 ``image/jpeg;q=0.5`` and one refusal held a thread 9 s. It is now linear."""
    from gateway.dicomweb import accept

    calls = 0
    matches = accept._matches

    def counted(media_range: MediaRange, offer: Offer, default_part: str) -> bool:
        nonlocal calls
        calls += 1
        return matches(media_range, offer, default_part)

    monkeypatch.setattr(accept, "_matches", counted)
    images = [Offer("image/jpeg", "*", False), Offer("image/png", "*", False), Offer("image/gif", "*", False)]
    header = ",".join(["image/jpeg;q=0.5"] * 2000 + ["image/jpeg;q=0"])
    with pytest.raises(NotAcceptable):
        negotiate(header, images, default_on_tie=True)
    assert calls <= 2 * 2001 * len(images)
    calls = 0
    assert negotiate(",".join(["image/png;q=0.5"] * 2000), images).part_type == "image/png"
    assert calls <= 2 * 2000 * len(images)
