"""Reading one text field out of a multipart/form-data body (the audio routes' `model`).

The simulator only needs a named field's value, so this walks the parts without a parser library.
"""

from __future__ import annotations

import re

_BOUNDARY = re.compile(rb'boundary=(?:"([^"]+)"|([^\s;]+))', re.IGNORECASE)
_NAME = re.compile(rb'\bname="([^"]*)"', re.IGNORECASE)


def boundary(content_type: bytes) -> bytes | None:
    match = _BOUNDARY.search(content_type)
    return (match.group(1) or match.group(2)) if match else None


def form_field(body: bytes, content_type: bytes, name: str) -> str | None:
    """The value of the plain (not file) part named `name`, or None when the body has none."""
    mark = boundary(content_type)
    if not mark:
        return None
    for part in body.split(b"--" + mark)[1:]:
        if part.startswith(b"--"):  # the closing delimiter
            break
        head, sep, value = part.partition(b"\r\n\r\n")
        if not sep:
            continue
        for line in head.split(b"\r\n"):
            if not line.lower().startswith(b"content-disposition:"):
                continue
            found = _NAME.search(line)
            if found and found.group(1) == name.encode() and b"filename=" not in line.lower():
                return value.removesuffix(b"\r\n").decode("utf-8", "replace")
    return None
