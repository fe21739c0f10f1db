"""Form bodies whose refusal names the limit that was hit.

Werkzeug refuses a multipart body with too many parts, or with one text field over its size
limit, with the same ``RequestEntityTooLarge`` as a body over ``MAX_CONTENT_LENGTH``; the
client would then read "larger than 33554432 bytes" about a 55 KB body (issue 26). The parser
here counts the parts it reads, so the error can say which limit it was.
"""

from __future__ import annotations

from typing import IO, Any

from flask import Request
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.formparser import FormDataParser


class FormLimitExceeded(RequestEntityTooLarge):
    """A multipart body over a part-count or field-size limit (not the body-size limit)."""


class _BoundaryCounter:
    """Wraps the body stream and counts multipart delimiters as they are read (a delimiter
    split between two reads is counted once, from a tail kept between reads)."""

    def __init__(self, stream: IO[bytes], boundary: bytes) -> None:
        self.stream = stream
        self.delimiter = b"--" + boundary
        self.tail = b""
        self.delimiters = 0

    def read(self, size: int = -1) -> bytes:
        data = self.stream.read(size)
        window = self.tail + data
        self.delimiters += window.count(self.delimiter)
        # Fewer bytes than a delimiter: they may start one, but cannot hold a counted one.
        self.tail = window[-(len(self.delimiter) - 1) :]
        return data

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


class LimitNamingFormParser(FormDataParser):
    def _parse_multipart(
        self,
        stream: IO[bytes],
        mimetype: str,
        content_length: int | None,
        options: dict[str, str],
    ) -> Any:
        counter = _BoundaryCounter(stream, options.get("boundary", "").encode("ascii"))
        try:
            return super()._parse_multipart(counter, mimetype, content_length, options)  # type: ignore[arg-type]
        except RequestEntityTooLarge:
            # N parts have N + 1 delimiters (the last one closes the body).
            if self.max_form_parts is not None and counter.delimiters > self.max_form_parts:
                message = (
                    f"the form has more than {self.max_form_parts} parts (the limit of parts "
                    "per request)"
                )
            else:
                message = (
                    f"a form field is larger than the limit of {self.max_form_memory_size} "
                    "bytes per text field"
                )
            raise FormLimitExceeded(message) from None


class ApiRequest(Request):
    form_data_parser_class = LimitNamingFormParser
