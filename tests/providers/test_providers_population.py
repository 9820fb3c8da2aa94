"""The simulated world's pure functions and the providers file, without a simulator."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import pytest

from core.providers.config import ProvidersConfig, ProvidersConfigError
from core.providers.population import (
    CARDS_PER_PERSON,
    SIM_TOKEN,
    card_for,
    face_of,
    id_card_image,
    issuer_of,
    liveness_token,
    media_type_of,
    parse_liveness_token,
    read_id_card_image,
    sms_code_in,
)
from core.providers.types import PROVIDERS, SmsSend
from core.services.identity import card_number_problem

ID_NUMBER = "11010519900307231X"


def _png_chunks(png: bytes) -> list[tuple[bytes, bytes]]:
    """(type, data) of every chunk, each CRC checked."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    offset, chunks = 8, []
    while offset < len(png):
        (size,) = struct.unpack_from(">I", png, offset)
        kind, data = png[offset + 4 : offset + 8], png[offset + 8 : offset + 8 + size]
        (crc,) = struct.unpack_from(">I", png, offset + 8 + size)
        assert crc == zlib.crc32(kind + data), kind
        chunks.append((kind, data))
        offset += 12 + size
    return chunks


def test_png_id_card_is_a_valid_png_carrying_the_printed_text() -> None:
    """Signature, IHDR first, tEXt, IDAT, IEND last, every CRC right; an image library
    decodes it; the OCR reads the name and ID back."""
    png = id_card_image("李四", ID_NUMBER)
    kinds = [kind for kind, _ in _png_chunks(png)]
    assert kinds == [b"IHDR", b"tEXt", b"IDAT", b"IEND"]
    assert media_type_of(png) == "image/png"
    assert read_id_card_image(png) == ("李四", ID_NUMBER)
    image_module = pytest.importorskip("PIL.Image")
    with image_module.open(io.BytesIO(png)) as image:
        image.load()
        assert (image.format, image.size) == ("PNG", (8, 8))


def test_jpeg_id_card_is_a_valid_jpeg_carrying_the_printed_text() -> None:
    """SOI, a COM segment, a baseline frame an image library decodes, EOI."""
    jpeg = id_card_image("李四", ID_NUMBER, "image/jpeg")
    assert jpeg[:3] == b"\xff\xd8\xff" and jpeg[-2:] == b"\xff\xd9"
    assert media_type_of(jpeg) == "image/jpeg"
    assert read_id_card_image(jpeg) == ("李四", ID_NUMBER)
    image_module = pytest.importorskip("PIL.Image")
    with image_module.open(io.BytesIO(jpeg)) as image:
        image.load()
        assert (image.format, image.size) == ("JPEG", (1, 1))


def test_damaged_or_foreign_images_are_unreadable() -> None:
    """A flipped byte (bad CRC), a truncated file, a GIF: nothing read."""
    png = bytearray(id_card_image("李四", ID_NUMBER))
    png[40] ^= 0xFF
    assert read_id_card_image(bytes(png)) is None
    assert read_id_card_image(id_card_image("李四", ID_NUMBER)[:-12]) is None
    assert read_id_card_image(b"GIF89a....") is None
    assert media_type_of(b"GIF89a....") is None


def test_cards_faces_tokens_codes() -> None:
    """A person's cards are distinct, Luhn-valid and from known issuers; faces differ by
    person; tokens round-trip and a changed token does not parse; codes read off texts."""
    cards = [card_for(ID_NUMBER, index) for index in range(CARDS_PER_PERSON)]
    assert len(set(cards)) == CARDS_PER_PERSON
    assert all(card_number_problem(card) is None and len(card) == 16 for card in cards)
    assert all(issuer_of(card) for card in cards)
    assert card_for(ID_NUMBER) == cards[0] != card_for("110105199003070011")
    face = face_of(ID_NUMBER)
    assert face != face_of("110105199003070011")
    assert parse_liveness_token(liveness_token(face)) == (face, True)
    assert parse_liveness_token(liveness_token(face, live=False)) == (face, False)
    assert parse_liveness_token(liveness_token(face).replace(".live.", ".spoof.")) is None
    assert parse_liveness_token("not a token") is None
    assert sms_code_in("Tally: code 042913 binds card ****1234; valid 5 min") == "042913"
    assert sms_code_in("no code, card 6228480000000000") is None


def test_sms_text_and_images_stay_out_of_repr() -> None:
    """A request logged by accident shows no code."""
    assert "123456" not in repr(SmsSend("r-1", "13900000000", "code 123456"))


def test_providers_file_with_env_and_file_tokens(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each section's token comes from the environment or a file; defaults apply unless
    a section overrides them."""
    monkeypatch.setenv("TALLY_TEST_PROVIDER_TOKEN", "from-the-environment")
    secret = tmp_path / "sms-token"
    secret.write_text("from-a-file\n")
    sections = "".join(
        f'[{name}]\nurl = "https://{name}.example.net/api/"\n'
        f'token = "env:TALLY_TEST_PROVIDER_TOKEN"\n'
        for name in PROVIDERS
        if name != "sms"
    )
    path = tmp_path / "providers.toml"
    path.write_text(
        "[defaults]\ntimeout_s = 2\nattempts_max = 4\n\n"
        + sections
        + f'[sms]\nurl = "https://sms.example.net"\ntoken = "file:{secret}"\ntimeout_s = 1.5\n'
    )
    config = ProvidersConfig.from_file(path)
    assert config.identity.url == "https://identity.example.net/api"
    assert config.identity.token == "from-the-environment"
    assert (config.identity.timeout_s, config.identity.attempts_max) == (2.0, 4)
    assert (config.sms.token, config.sms.timeout_s, config.sms.attempts_max) == (
        "from-a-file",
        1.5,
        4,
    )
    assert "from-" not in repr(config)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[identity]\nurl = 'http://x'\n", "[identity] token is missing"),
        ("[bank]\n", "unknown section(s) bank"),
        (
            "[defaults]\nattempts_max = 0\n[identity]\nurl = 'http://x'\ntoken = 't'\n",
            "[identity] attempts_max must be in 1..10",
        ),
        ("[defaults]\ntimeout_s = 'fast'\n", "timeout_s must be a number"),
        ("[defaults]\nretries = 3\n", "unknown key(s) retries"),
        ("[identity]\nurl = 'ftp://x'\ntoken = 't'\n", "url must start with http"),
        ("[identity]\nurl = 'http://x'\ntoken = 'env:TALLY_NO_SUCH_VAR'\n", "is not set"),
        ("[identity]\nurl = 'http://x'\ntoken = 't'\n", "[ocr] is missing"),
        ("[identity\n", "providers file"),
    ],
)
def test_bad_providers_file_is_refused_precisely(tmp_path: Path, text: str, message: str) -> None:
    """Each mistake refuses the file with a message naming the section and key."""
    path = tmp_path / "providers.toml"
    path.write_text(text)
    with pytest.raises(ProvidersConfigError) as raised:
        ProvidersConfig.from_file(path)
    assert message in str(raised.value)


def test_at_puts_every_provider_under_one_base_url() -> None:
    """`at` gives {base}/identity ... {base}/sms, the simulator's token by default."""
    config = ProvidersConfig.at("http://127.0.0.1:8091/")
    assert [config.endpoint(name).url for name in PROVIDERS] == [
        f"http://127.0.0.1:8091/{name}" for name in PROVIDERS
    ]
    assert {config.endpoint(name).token for name in PROVIDERS} == {SIM_TOKEN}
