"""Personal data never in a log line: phones, emails and ID numbers masked on the way
out, whatever module logged them and however (a message, its args, an exception).

Installed on every handler of a grid process (api/runtime/process.py) and of the
CLI; it rewrites the record's final text, so no formatter can undo it.
"""

from __future__ import annotations

import logging
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


class MaskingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = mask(record.exc_text)
        masked = mask(text)
        if masked != text or record.args:
            record.msg, record.args = masked, ()
        return True


def install(logger: logging.Logger | None = None) -> None:
    """On every handler of ``logger`` (the root logger): what any module logs is masked."""
    target = logger or logging.getLogger()
    for handler in target.handlers:
        if not any(isinstance(f, MaskingFilter) for f in handler.filters):
            handler.addFilter(MaskingFilter())
