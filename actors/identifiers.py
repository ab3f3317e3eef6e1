"""Identifier values: their normal forms, masks, blocked values and keyed hashes.

An identifier never travels into the grid in clear: the gateway turns it into
``(type, digest, shown)``: ``digest`` is an HMAC of its normal form under the
deployment's secret (what matching needs), ``shown`` what answers may show
(phone ``+86 138****1234``, ID number ``1101**********123X``, email
``a***@example.com``; other types as given). The journal, the store, Redis,
events and logs only ever hold those two.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import os
import re
from dataclasses import dataclass

import phonenumbers
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from stdnum.cn import ric

from omnigrid.actors.declaration import Refusal
from omnigrid.actors.errors import InvalidRequest

TYPES = (
    "phone",
    "id_number",
    "wechat_openid",
    "wechat_unionid",
    "alipay_uid",
    "member_card",
    "device_id",
    "email",
)
# Values no real identifier has: a channel sending one has a bug.
BLOCKED = frozenset({"", "null", "undefined", "anonymous", "unknown", "0"})
MAX_VALUE_CHARS = 128
BLOCKED_IDENTIFIER = Refusal("blocked_identifier", 422, "Blocked identifier")
ALIPAY_UID = re.compile(r"2088\d{12}")
EMAIL = re.compile(r"[^@\s]{1,64}@[^@\s]+\.[^@\s]+")
PRINTABLE = re.compile(r"[\x21-\x7e]+")

_secret = b""
_region = "CN"


def configure(secret: bytes, region: str = "CN") -> None:
    """The deployment's matching key, and the region national phone numbers are in."""
    global _secret, _region
    if len(secret) < 16:
        raise ValueError("the identity secret must be at least 16 bytes")
    _secret, _region = secret, region


def configured() -> bool:
    return bool(_secret)


@dataclass(frozen=True, slots=True)
class Identifier:
    type: str
    digest: str  # keyed hash of the normal form: the directory's key
    shown: str  # what answers show
    app_id: str | None = None
    sealed: str | None = None  # a phone or email, encrypted: for X-Unmask (never in clear)


SEALED = ("phone", "email")  # what a pii:read key may see unmasked


def seal(normal: str) -> str:
    """The normal form encrypted (AES-GCM, a key derived from the deployment's secret)."""
    nonce = os.urandom(12)
    token = AESGCM(_seal_key()).encrypt(nonce, normal.encode(), b"og1-seal")
    return base64.urlsafe_b64encode(nonce + token).decode()


def unseal(sealed: str) -> str:
    raw = base64.urlsafe_b64decode(sealed.encode())
    return AESGCM(_seal_key()).decrypt(raw[:12], raw[12:], b"og1-seal").decode()


def _seal_key() -> bytes:
    if not _secret:
        raise RuntimeError("identifiers.configure() was not called: no identity secret")
    return hmac.new(_secret, b"og1-seal-key", hashlib.sha256).digest()


def parse(type_: str, value: object, app_id: object = None) -> Identifier:
    """Check, normalise, mask and hash one identifier; a refusal names the field only."""
    if type_ not in TYPES:
        raise InvalidRequest(f"type must be one of {', '.join(TYPES)}")
    if not isinstance(value, str) or len(value) > MAX_VALUE_CHARS:
        raise InvalidRequest(f"value must be a string of at most {MAX_VALUE_CHARS} characters")
    text = value.strip()
    if text.lower() in BLOCKED or len(set(text)) == 1:
        raise BLOCKED_IDENTIFIER(f"this {type_} is a placeholder, not an identifier")
    if type_ == "wechat_openid":
        if not isinstance(app_id, str) or not PRINTABLE.fullmatch(app_id) or len(app_id) > 64:
            raise InvalidRequest("a wechat_openid needs the app_id it belongs to")
    elif app_id is not None:
        raise InvalidRequest("only a wechat_openid takes an app_id")
    normal, shown = _normal(type_, text)
    scope = app_id if isinstance(app_id, str) else ""
    sealed = seal(normal) if type_ in SEALED else None
    return Identifier(type_, digest(type_, normal, scope), shown, scope or None, sealed)


def digest(type_: str, normal: str, scope: str = "") -> str:
    if not _secret:
        raise RuntimeError("identifiers.configure() was not called: no identity secret")
    message = f"{type_}\x1f{scope}\x1f{normal}".encode()
    return hmac.new(_secret, message, hashlib.sha256).hexdigest()[:40]


def _normal(type_: str, text: str) -> tuple[str, str]:
    """(normal form, shown form); a malformed value is refused without echoing it."""
    if type_ == "phone":
        return _phone(text, _region)
    if type_ == "id_number":
        normal = text.upper()
        if len(normal) != 18 or not ric.is_valid(normal):
            raise InvalidRequest("value is not a valid resident ID number (checksum)")
        return normal, normal[:4] + "*" * 10 + normal[-4:]
    if type_ == "email":
        normal = text.lower()
        if not EMAIL.fullmatch(normal):
            raise InvalidRequest("value is not an email address")
        local, _, domain = normal.partition("@")
        return normal, f"{local[0]}***@{domain}"
    if type_ == "alipay_uid" and not ALIPAY_UID.fullmatch(text):
        raise InvalidRequest("an alipay_uid is 16 digits starting 2088")
    if not PRINTABLE.fullmatch(text):
        raise InvalidRequest("value must be printable ASCII without spaces")
    return text, text


# Parsing a phone number costs ~30 us, a third of a whole request: the same
# shoppers' numbers come again and again (at every login), so the answers are
# kept, in this process's memory only.
@functools.lru_cache(maxsize=65_536)
def _phone(text: str, region: str) -> tuple[str, str]:
    try:
        number = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException:
        raise InvalidRequest("value is not a phone number") from None
    if not phonenumbers.is_valid_number(number):
        raise InvalidRequest("value is not a valid phone number")
    national = str(number.national_number)
    masked = national[:3] + "*" * max(0, len(national) - 7) + national[-4:]
    normal = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    return normal, f"+{number.country_code} {masked}"
