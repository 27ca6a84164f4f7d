"""EXIF for JPEG and WebP files, written the way AUTOMATIC1111 writes it (piexif), so its PNG Info,
sd-prompt-reader and sd-parsers read sdcli's files:

- ``Exif.UserComment`` (type UNDEFINED): the A1111 ``parameters`` text, ``UNICODE\\0`` + UTF-16-BE
  (``piexif.helper.UserComment.dump(text, encoding="unicode")``, as A1111's ``save_image_with_geninfo``);
- ``0th.ImageDescription`` (type ASCII): the sdcli JSON record with every non-ASCII character as a JSON
  ``\\u`` escape, so Unicode survives the ASCII tag and ``json.loads`` gives the record back exactly.
"""

from __future__ import annotations

import json
from typing import Any, Optional

MAX_JPEG_EXIF = 65533  # a JPEG APP1 segment holds at most 64 KiB, including its 2-byte length


def dump(parameters: str, record: Optional[dict[str, Any]], limit: Optional[int] = None) -> bytes:
    """The EXIF block (``Exif\\0\\0`` + TIFF data) for Pillow's ``save(exif=...)``. Past ``limit`` bytes
    the record is left out first, then the parameters (the manifest still holds both)."""
    import piexif
    import piexif.helper

    zeroth = {}
    if record is not None:
        zeroth[piexif.ImageIFD.ImageDescription] = json.dumps(record, ensure_ascii=True, sort_keys=True).encode("ascii")
    exif_ifd = {}
    if parameters:
        exif_ifd[piexif.ExifIFD.UserComment] = piexif.helper.UserComment.dump(parameters, encoding="unicode")
    data = piexif.dump({"0th": zeroth, "Exif": exif_ifd})
    if limit is not None and len(data) > limit:
        if record is not None:
            return dump(parameters, None, limit)
        return dump("", None, limit) if parameters else data
    return data


def texts(exif) -> dict[str, str]:
    """``parameters`` and ``sdcli`` texts from a Pillow ``Image.Exif`` (sdcli's, A1111's or any tool's
    UserComment in the ASCII, JIS or Unicode encoding)."""
    import piexif.helper

    found: dict[str, str] = {}
    description = exif.get(0x010E)
    if isinstance(description, bytes):
        description = description.decode("utf-8", errors="replace")
    if isinstance(description, str) and description.startswith("{"):
        found["sdcli"] = description
    comment = exif.get_ifd(0x8769).get(0x9286)
    if isinstance(comment, str):  # a file that stored it as text
        comment = comment.encode("utf-8")
    if isinstance(comment, bytes) and comment:
        try:
            found["parameters"] = piexif.helper.UserComment.load(comment)
        except ValueError:  # no or an unknown encoding prefix: A1111 reads it as UTF-8
            found["parameters"] = comment[8:].decode("utf-8", errors="replace") if len(comment) > 8 else ""
    return found
