"""Each simulated provider over HTTP through HttpProviders: its happy path and its fraud.

Run under asyncio and trio: the client creates its httpx pool in whichever loop runs.
"""

from __future__ import annotations

import struct

import pytest

from core.providers.population import (
    CARDS_PER_PERSON,
    card_for,
    face_of,
    id_card_image,
    issuer_of,
    liveness_token,
    sms_code_in,
)
from core.providers.types import (
    CardCheck,
    IdentityCheck,
    LivenessCheck,
    OcrLookup,
    OcrRequest,
    ProviderError,
    SmsSend,
)
from tests.providers.providers_helpers import (
    counters,
    delta,
    inbox,
    mobile,
    pin_citizen,
    providers,
    request_id,
    resident_id,
)

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def test_identity_matches_name_id_and_face(sim_url: str) -> None:
    """A person's name and ID match; with their own face the photo matches too."""
    id_number = resident_id()
    async with providers(sim_url) as client:
        plain = await client.identity(IdentityCheck(request_id(), "王五", id_number))
        with_face = await client.identity(
            IdentityCheck(request_id(), "王五", id_number, photo_ref=face_of(id_number))
        )
    assert (plain.match, plain.photo_match, plain.reasons) == (True, None, ())
    assert (with_face.match, with_face.photo_match, with_face.reasons) == (True, True, ())
    assert plain.attempts == with_face.attempts == 1
    assert plain.reference.startswith("idv-") and plain.reference != with_face.reference


async def test_identity_refuses_another_name_face_or_unknown_id(sim_url: str) -> None:
    """The database's pinned name must match; another person's face does not; an ID
    number that is not one is not found."""
    id_number, other = resident_id(), resident_id()
    pin_citizen(sim_url, id_number, "赵六")
    async with providers(sim_url) as client:
        named = await client.identity(IdentityCheck(request_id(), "赵六", id_number))
        wrong_name = await client.identity(IdentityCheck(request_id(), "钱七", id_number))
        wrong_face = await client.identity(
            IdentityCheck(request_id(), "赵六", id_number, photo_ref=face_of(other))
        )
        unknown = await client.identity(IdentityCheck(request_id(), "赵六", id_number[:17] + "?"))
    assert named.match
    assert (wrong_name.match, wrong_name.reasons) == (False, ("name",))
    assert (wrong_face.match, wrong_face.photo_match, wrong_face.reasons) == (
        True,
        False,
        ("photo",),
    )
    assert (unknown.match, unknown.reasons) == (False, ("not_found",))


async def test_stolen_identity_photo_is_somebody_elses(fraud_url: str) -> None:
    """Under --photo-mismatch-rate 1 the database photo is never the holder's own face."""
    id_number = resident_id()
    async with providers(fraud_url) as client:
        result = await client.identity(
            IdentityCheck(request_id(), "孙八", id_number, photo_ref=face_of(id_number))
        )
    assert (result.match, result.photo_match, result.reasons) == (True, False, ("photo",))


@pytest.mark.parametrize("media_type", ["image/png", "image/jpeg"])
async def test_ocr_reads_the_id_card_and_keeps_the_result(sim_url: str, media_type: str) -> None:
    """The printed name and ID come back; the reference fetches the same result later."""
    id_number = resident_id()
    image = id_card_image("周九", id_number, media_type)
    async with providers(sim_url) as client:
        read = await client.ocr(OcrRequest(request_id(), image, media_type))
        looked_up = await client.ocr(OcrLookup(request_id(), read.reference))
    assert (read.readable, read.name, read.id_number, read.reasons) == (
        True,
        "周九",
        id_number,
        (),
    )
    assert (looked_up.readable, looked_up.name, looked_up.id_number) == (True, "周九", id_number)
    assert looked_up.reference == read.reference


def _without_text_chunk(png: bytes) -> bytes:
    """The same PNG with its tEXt chunk taken out (still a valid PNG)."""
    offset, kept = 8, [png[:8]]
    while offset < len(png):
        (size,) = struct.unpack_from(">I", png, offset)
        chunk = png[offset : offset + 12 + size]
        if chunk[4:8] != b"tEXt":
            kept.append(chunk)
        offset += 12 + size
    return b"".join(kept)


async def test_ocr_unreadable_image_and_refusals(sim_url: str) -> None:
    """An image without the printed text is unreadable (200); a wrong media type is
    refused (415) and an unknown reference is refused (404)."""
    png = id_card_image("吴十", resident_id())
    blank = _without_text_chunk(png)
    assert b"tEXt" in png and b"tEXt" not in blank
    async with providers(sim_url) as client:
        unreadable = await client.ocr(OcrRequest(request_id(), blank, "image/png"))
        with pytest.raises(ProviderError) as wrong_type:
            await client.ocr(OcrRequest(request_id(), png, "image/jpeg"))
        with pytest.raises(ProviderError) as unknown:
            await client.ocr(OcrLookup(request_id(), "ocr-000000000000000000000000"))
    assert (unreadable.readable, unreadable.name, unreadable.reasons) == (
        False,
        "",
        ("unreadable",),
    )
    assert (wrong_type.value.kind, wrong_type.value.attempts) == ("refused", 1)
    assert "HTTP 415" in wrong_type.value.detail and "image/jpeg" in wrong_type.value.detail
    assert (unknown.value.kind, unknown.value.provider) == ("refused", "ocr")
    assert "HTTP 404" in unknown.value.detail


async def test_liveness_live_spoof_and_a_forged_token(sim_url: str) -> None:
    """A live token names its face with a high score; a spoof is not live; a token not
    made by the SDK is refused (422)."""
    face = face_of(resident_id())
    async with providers(sim_url) as client:
        live = await client.liveness(LivenessCheck(request_id(), liveness_token(face)))
        spoof = await client.liveness(LivenessCheck(request_id(), liveness_token(face, False)))
        with pytest.raises(ProviderError) as forged:
            await client.liveness(LivenessCheck(request_id(), f"lv1.{face}.live.000000000000"))
    assert (live.live, live.face_ref, live.reasons) == (True, face, ())
    assert live.score_ppm >= 900_000
    assert (spoof.live, spoof.face_ref, spoof.reasons) == (False, face, ("spoof",))
    assert spoof.score_ppm < 300_000
    assert forged.value.kind == "refused" and "HTTP 422" in forged.value.detail


def _card(number: str, name: str, id_number: str, reserved_mobile: str) -> CardCheck:
    return CardCheck(request_id(), number, "class_i_debit", name, id_number, reserved_mobile)


async def test_issuer_confirms_the_holders_cards_only(sim_url: str) -> None:
    """Each of a person's cards matches; another person's card is mismatched on the
    holder; a name other than the pinned one is mismatched on the name."""
    id_number, other, phone = resident_id(), resident_id(), mobile()
    pin_citizen(sim_url, id_number, "郑一")
    async with providers(sim_url) as client:
        own = [
            await client.card(_card(card_for(id_number, index), "郑一", id_number, phone))
            for index in range(CARDS_PER_PERSON)
        ]
        someone_elses = await client.card(_card(card_for(other), "郑一", id_number, phone))
        renamed = await client.card(_card(card_for(id_number), "郑二", id_number, phone))
    assert [(result.match, result.mismatched) for result in own] == [(True, ())] * 4
    assert [result.issuer for result in own] == [
        issuer_of(card_for(id_number, index)) for index in range(CARDS_PER_PERSON)
    ]
    assert all(result.issuer for result in own)
    assert (someone_elses.match, someone_elses.mismatched) == (False, ("holder",))
    assert (renamed.match, renamed.mismatched) == (False, ("holder_name",))


async def test_issuer_card_with_another_reserved_mobile(fraud_url: str) -> None:
    """Under --card-mismatch-rate 1 the holder's own card has another reserved mobile."""
    id_number = resident_id()
    async with providers(fraud_url) as client:
        result = await client.card(_card(card_for(id_number), "冯三", id_number, mobile()))
    assert (result.match, result.mismatched) == (False, ("reserved_mobile",))


async def test_sms_is_delivered_to_the_phone(sim_url: str) -> None:
    """The text lands in the phone's inbox, newest last; the code reads off it."""
    phone = mobile()
    async with providers(sim_url) as client:
        first = await client.sms(SmsSend(request_id(), phone, "Tally code 123456, 5 minutes"))
        second = await client.sms(SmsSend(request_id(), phone, "Tally code 654321, 5 minutes"))
    assert first.accepted and second.accepted and first.message_id != second.message_id
    messages = inbox(sim_url, phone)
    assert [sms_code_in(message["text"]) for message in messages] == ["123456", "654321"]
    assert [message["message_id"] for message in messages] == [
        first.message_id,
        second.message_id,
    ]


async def test_sms_lost_is_accepted_and_never_delivered(fraud_url: str) -> None:
    """Under --sms-loss-rate 1 the gateway accepts the text and the phone never gets it."""
    phone = mobile()
    before = counters(fraud_url, "sms")
    async with providers(fraud_url) as client:
        result = await client.sms(SmsSend(request_id(), phone, "Tally code 111111"))
    assert result.accepted and result.message_id
    assert inbox(fraud_url, phone) == []
    assert delta(before, counters(fraud_url, "sms")) == {"requests": 1, "answers": 1, "lost": 1}
