"""The simulated world: whose face, whose cards, what an ID card photo holds.

Pure functions that the provider simulator (`core.providers.sim`), the tests and the
load tests share, so a test can act like a person of that world without asking the
simulator: photograph an ID card (`id_card_image`), pass a liveness check
(`liveness_token`), present one of the cards another bank issued to them (`card_for`),
read the SMS code off their phone (`sms_code_in`).

- Every ID number has a face, `face_of(id_number)`. The identity database holds that
  face as the ID's photo, except for the stolen identities the simulator draws
  (`--photo-mismatch-rate`): there the database photo is somebody else's.
- A liveness SDK returns a token naming the face it saw and whether it saw a live
  person or a spoof (a photo held up to the camera); it carries a check value, so a
  token that was not made by `liveness_token` is refused as malformed (422).
- Each person holds `CARDS_PER_PERSON` cards of other banks, `card_for(id_number, 0..3)`;
  the issuer confirms the holder of those and of no other card.
- An ID card photo is a small valid PNG or JPEG whose metadata (a PNG tEXt chunk, a
  JPEG COM segment) holds the printed name and ID number as JSON: that is what the
  simulator's OCR "reads". An image without it is unreadable.

Nothing here is secret: it is a test fixture that both sides compute.
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
import zlib

from core.services.identity import luhn_check_digit

SIM_TOKEN = "sim-development-token"  # the simulator's default bearer token (public)
CARDS_PER_PERSON = 4
# Other banks' BINs (development values) and their names, by card index.
CARD_ISSUERS = (
    ("622848", "Agricultural Bank of China"),
    ("621700", "China Construction Bank"),
    ("622202", "Industrial and Commercial Bank of China"),
    ("622588", "China Merchants Bank"),
)
FACE_PATTERN = re.compile(r"face-[0-9a-f]{24}")
LIVENESS_TOKEN_VERSION = "lv1"
LIVENESS_STATES = ("live", "spoof")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"
ID_CARD_KEYWORD = b"Tally-ID-Card"  # the PNG tEXt keyword; the JPEG COM starts with it too
SMS_CODE_PATTERN = re.compile(r"(?<![0-9])[0-9]{6}(?![0-9])")


def _digest(*parts: str) -> str:
    return hashlib.sha256("\x00".join(("tally-sim", *parts)).encode()).hexdigest()


def face_of(id_number: str) -> str:
    """The face ref of the person whose ID number this is."""
    return "face-" + _digest("face", id_number)[:24]


def liveness_token(face_ref: str, live: bool = True) -> str:
    """The token a liveness SDK returns after filming `face_ref` (a spoof if not `live`)."""
    assert FACE_PATTERN.fullmatch(face_ref), face_ref
    state = "live" if live else "spoof"
    return f"{LIVENESS_TOKEN_VERSION}.{face_ref}.{state}.{_liveness_check(face_ref, state)}"


def parse_liveness_token(token: str) -> tuple[str, bool] | None:
    """(face ref, live) of a token made by `liveness_token`; None if it is not one."""
    parts = token.split(".")
    if len(parts) != 4:
        return None
    version, face_ref, state, check = parts
    if version != LIVENESS_TOKEN_VERSION or state not in LIVENESS_STATES:
        return None
    if not FACE_PATTERN.fullmatch(face_ref) or check != _liveness_check(face_ref, state):
        return None
    return face_ref, state == "live"


def _liveness_check(face_ref: str, state: str) -> str:
    return _digest("liveness", face_ref, state)[:12]


def card_for(id_number: str, index: int = 0) -> str:
    """Card `index` (0 .. CARDS_PER_PERSON-1) that another bank issued to this person:
    16 digits, Luhn-valid, the bank's BIN first."""
    assert 0 <= index < CARDS_PER_PERSON, index
    bin_ = CARD_ISSUERS[index][0]
    body = str(int(_digest("card", id_number, str(index))[:15], 16) % 10**9).zfill(9)
    return bin_ + body + luhn_check_digit(bin_ + body)


def issuer_of(card_number: str) -> str:
    """The issuing bank's name by the card's BIN ("" if none of this world's banks)."""
    for bin_, name in CARD_ISSUERS:
        if card_number.startswith(bin_):
            return name
    return ""


def sms_code_in(text: str) -> str | None:
    """The 6-digit code in an SMS text (the first run of exactly six digits)."""
    found = SMS_CODE_PATTERN.search(text)
    return found.group(0) if found else None


def media_type_of(data: bytes) -> str | None:
    """ "image/png" or "image/jpeg" by the magic bytes; None for anything else."""
    if data.startswith(PNG_SIGNATURE):
        return "image/png"
    if data.startswith(JPEG_MAGIC):
        return "image/jpeg"
    return None


# --- ID card images ----------------------------------------------------------------------


def id_card_image(name: str, id_number: str, media_type: str = "image/png") -> bytes:
    """A photo of this ID card: a small valid image the simulator's OCR reads.

    The JSON is ASCII (non-ASCII escaped), so it fits a PNG tEXt chunk (Latin-1)."""
    text = json.dumps({"name": name, "id_number": id_number}, ensure_ascii=True).encode()
    if media_type == "image/png":
        return _png(text)
    assert media_type == "image/jpeg", media_type
    return _jpeg(text)


def read_id_card_image(data: bytes) -> tuple[str, str] | None:
    """(name, id number) printed on the ID card in this image; None if unreadable."""
    if data.startswith(PNG_SIGNATURE):
        text = _png_text(data)
    elif data.startswith(JPEG_MAGIC):
        text = _jpeg_comment(data)
    else:
        return None
    if text is None:
        return None
    try:
        fields = json.loads(text)
    except ValueError:
        return None
    if not isinstance(fields, dict):
        return None
    name, id_number = fields.get("name"), fields.get("id_number")
    if not isinstance(name, str) or not isinstance(id_number, str) or not name or not id_number:
        return None
    return name, id_number


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png(text: bytes) -> bytes:
    """8 x 8 grey pixels (a faint gradient), the text in a tEXt chunk before the pixels."""
    width = height = 8
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    rows = b"".join(b"\x00" + bytes(96 + 8 * (x + y) for x in range(width)) for y in range(height))
    return (
        PNG_SIGNATURE
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"tEXt", ID_CARD_KEYWORD + b"\x00" + text)
        + _png_chunk(b"IDAT", zlib.compress(rows))
        + _png_chunk(b"IEND", b"")
    )


def _png_text(data: bytes) -> bytes | None:
    """The ID card tEXt of a PNG whose chunks all have their CRCs; None otherwise."""
    offset = len(PNG_SIGNATURE)
    found = None
    while offset + 12 <= len(data):
        (size,) = struct.unpack_from(">I", data, offset)
        kind = data[offset + 4 : offset + 8]
        body = data[offset + 8 : offset + 8 + size]
        crc = data[offset + 8 + size : offset + 12 + size]
        if len(body) != size or len(crc) != 4:
            return None
        if struct.unpack(">I", crc)[0] != zlib.crc32(kind + body):
            return None
        if kind == b"tEXt" and body.startswith(ID_CARD_KEYWORD + b"\x00"):
            found = body[len(ID_CARD_KEYWORD) + 1 :]
        if kind == b"IEND":
            return found
        offset += 12 + size
    return None  # no IEND: truncated


def _segment(marker: int, body: bytes) -> bytes:
    assert len(body) + 2 <= 0xFFFF
    return bytes((0xFF, marker)) + struct.pack(">H", len(body) + 2) + body


def _jpeg(text: bytes) -> bytes:
    """A baseline 1 x 1 grey JPEG (one DC-only block) with the text in a COM segment."""
    quantization = b"\x00" + b"\x01" * 64  # table 0, 8-bit, all ones
    frame = struct.pack(">BHHB", 8, 1, 1, 1) + b"\x01\x11\x00"  # 1 component, 1x1, table 0
    # One Huffman code each ("0", 1 bit): DC category 0 (no difference), AC end of block.
    dc_table = b"\x00" + b"\x01" + b"\x00" * 15 + b"\x00"
    ac_table = b"\x10" + b"\x01" + b"\x00" * 15 + b"\x00"
    scan = b"\x01" + b"\x01\x00" + b"\x00\x3f\x00"
    return (
        b"\xff\xd8"
        + _segment(0xFE, ID_CARD_KEYWORD + b"\x00" + text)
        + _segment(0xDB, quantization)
        + _segment(0xC0, frame)
        + _segment(0xC4, dc_table)
        + _segment(0xC4, ac_table)
        + _segment(0xDA, scan)
        + b"\x3f"  # the two code bits "00", padded with ones
        + b"\xff\xd9"
    )


def _jpeg_comment(data: bytes) -> bytes | None:
    """The ID card COM segment among the JPEG's header segments; None if there is none."""
    offset = 2
    while offset + 4 <= len(data) and data[offset] == 0xFF:
        marker = data[offset + 1]
        if marker in (0xD9, 0xDA):  # end of image, start of scan: no more headers
            return None
        (size,) = struct.unpack_from(">H", data, offset + 2)
        body = data[offset + 4 : offset + 2 + size]
        if size < 2 or len(body) != size - 2:
            return None
        if marker == 0xFE and body.startswith(ID_CARD_KEYWORD + b"\x00"):
            return body[len(ID_CARD_KEYWORD) + 1 :]
        offset += 2 + size
    return None
