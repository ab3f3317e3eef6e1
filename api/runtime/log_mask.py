"""Personal data never in a log line: phones, emails and ID numbers masked on the way
out, whatever module logged them and however (a message, its args, an exception).

Installed on every handler of a grid process (api/runtime/process.py) and of the
CLI; it rewrites the record's final text, so no formatter can undo it.
"""

from __future__ import annotations

import logging

from omnigrid.api.http.personal import mask

__all__ = ["MaskingFilter", "install", "mask"]


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
