"""POST /v1/videos as multipart/form-data (what `curl -F` and HTML forms send): files instead of base64.

Text parts carry VideoRequest's fields (`prompt`, `frames`, ...; pydantic turns "9" into 9); file parts named
`reference_images` (any number) and `context_video` carry the media. The parts become the JSON request's fields
(files base64-encoded), so both forms are validated by the same model and answered alike. Parsed by the standard
library's email parser; anything it cannot read is a 400 naming the problem."""

from __future__ import annotations

import base64
import email.parser
import email.policy

FILE_FIELDS = ("reference_images", "context_video")


class MultipartError(ValueError):
    """A multipart body the server cannot read; the message says why."""


def is_multipart(content_type: str | None) -> bool:
    return (content_type or "").split(";")[0].strip().lower() == "multipart/form-data"


def form_to_request(body: bytes, content_type: str) -> dict:
    """The fields of a multipart/form-data body as VideoRequest's JSON fields."""
    if "boundary=" not in content_type:
        raise MultipartError("Content-Type: multipart/form-data needs a boundary parameter")
    try:
        message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
            b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body
        )
        parts = list(message.iter_parts()) if message.is_multipart() else None
    except Exception as error:  # the email package raises several kinds for broken input
        raise MultipartError(f"body: not a readable multipart/form-data body ({error})") from None
    if not parts:
        raise MultipartError("body: no form-data parts (check the boundary)")
    fields: dict = {}
    for part in parts:
        name = part.get_param("name", header="content-disposition")
        if not isinstance(name, str) or not name:
            raise MultipartError("a form-data part has no name (Content-Disposition: form-data; name=...)")
        payload = part.get_payload(decode=True)
        data = payload if isinstance(payload, bytes) else b""
        if name in FILE_FIELDS:
            encoded = base64.b64encode(data).decode()
            if name == "reference_images":
                fields.setdefault(name, []).append(encoded)
            elif name in fields:
                raise MultipartError(f"{name}: sent more than once; send one context clip")
            else:
                fields[name] = encoded
        else:
            if name in fields:
                raise MultipartError(f"{name}: sent more than once")
            try:
                fields[name] = data.decode("utf-8")
            except UnicodeDecodeError:
                raise MultipartError(f"{name}: not UTF-8 text") from None
    return fields


__all__ = ["FILE_FIELDS", "MultipartError", "form_to_request", "is_multipart"]
