"""Phones, emails and ID numbers found in free text, masked: for log lines
(api/runtime/log_mask.py) and for what a problem document echoes of a request."""

from __future__ import annotations

import re

_EMAIL = re.compile(r"([A-Za-z0-9._%+-])[A-Za-z0-9._%+-]*@([A-Za-z0-9.-]+\.[A-Za-z]{2,})")
_ID_NUMBER = re.compile(r"(?<![0-9A-Za-z])(\d{4})\d{10}(\d{3}[\dXx])(?![0-9A-Za-z])")
_PHONE = re.compile(r"(?<![0-9A-Za-z])(\+?\d{1,3}[ -]?)?(1[3-9]\d)\d{4}(\d{4})(?![0-9A-Za-z])")
_E164 = re.compile(r"(?<![0-9A-Za-z])\+(\d{2,4})\d{4,10}(\d{4})(?![0-9A-Za-z])")


def mask(text: str) -> str:
    text = _EMAIL.sub(r"\1***@\2", text)
    text = _ID_NUMBER.sub(r"\1**********\2", text)
    text = _PHONE.sub(lambda m: f"{m.group(1) or ''}{m.group(2)}****{m.group(3)}", text)
    return _E164.sub(r"+\1****\2", text)
