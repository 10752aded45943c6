"""Images out of a prediction request, within the server's limits.

Two ways to send images to `POST /predict`:
- multipart/form-data: one file part per image (any field name, e.g. `images`), and the
  optional fields `threshold` and `top_k`;
- application/json: {"images": ["<base64>", {"name": "a.png", "data": "<base64>"}, ...],
  "threshold": 0.4, "top_k": 3} (a `data:image/png;base64,` prefix is accepted).
`threshold` and `top_k` may also be query parameters; the body's win.

Every refusal is an ApiError with its HTTP status and a message naming the image, the field
or the limit: 400 a body that is no JSON or no multipart, 413 a body, a file or an image
(in pixels: a decompression bomb, at Pillow's warning already) over the limits or too many
images, 415 another content type, 422 no image, a file that is no image, a bad field.
Decoding is engine.data.read_image (EXIF orientation, RGB) at the predictor's decode size,
as `visionboard predict` reads files (engine.predict.Predictor.read).
"""

from __future__ import annotations

import base64
import binascii
import io
import json
from dataclasses import dataclass
from typing import Any

from PIL import Image

from engine.data.upload import MB, size_text


class ApiError(Exception):
    """An HTTP error answer: status, message, extra headers and JSON fields."""

    def __init__(self, status: int, message: str, headers=None, **extra: Any):
        super().__init__(message)
        self.status, self.message = status, message
        self.headers = headers or {}
        self.extra = extra


@dataclass(frozen=True)
class Limits:
    """What one request may send, and how requests are batched."""

    max_images: int = 16  # images in one request
    max_file_bytes: int = 10 * MB  # one image file
    max_pixels: int = Image.MAX_IMAGE_PIXELS or 89_478_485  # width x height of one image
    max_batch: int = 16  # images predicted in one call
    max_wait_ms: float = 5.0  # how long a batch waits for more requests
    max_queue: int = 64  # images waiting; past it, 503 with Retry-After

    @property
    def max_body_bytes(self) -> int:
        """A request's body: every image at its largest, base64 encoded, and some room."""
        return self.max_images * (self.max_file_bytes * 4 // 3 + 4096) + 64 * 1024

    def check(self) -> None:
        for name in ("max_images", "max_file_bytes", "max_pixels", "max_batch", "max_queue"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} {getattr(self, name)}: expected 1 or more")
        if self.max_wait_ms < 0:
            raise ValueError(f"max_wait_ms {self.max_wait_ms}: expected 0 or more")
        if self.max_images > self.max_queue:
            raise ValueError(
                f"max_images {self.max_images} is above max_queue {self.max_queue}: one "
                "request could never be queued"
            )


async def read_body(request, limits: Limits) -> bytes:
    """The whole body, refused (413) as soon as it passes the limit."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limits.max_body_bytes:
        raise _body_too_large(int(declared), limits)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limits.max_body_bytes:
            raise _body_too_large(len(body), limits)
    return bytes(body)


def _body_too_large(size: int, limits: Limits) -> ApiError:
    return ApiError(
        413,
        f"the request body ({size_text(size)} or more) is over the limit of "
        f"{size_text(limits.max_body_bytes)} ({limits.max_images} images of at most "
        f"{size_text(limits.max_file_bytes)})",
    )


async def read_request(request, limits: Limits) -> tuple[list[tuple[str, bytes]], dict[str, Any]]:
    """([(image name, file bytes)], {field: raw value}) of a prediction request: the files
    checked for count and size, not decoded yet (decode_images does that)."""
    body = await read_body(request, limits)
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    params: dict[str, Any] = dict(request.query_params)
    if kind == "multipart/form-data":
        files, fields = await _read_multipart(request.headers, body, limits)
    elif kind in ("application/json", ""):
        files, fields = _read_json(body, limits)
    else:
        raise ApiError(
            415, f"content type {kind!r}: send multipart/form-data (files) or application/json"
        )
    params.update(fields)
    unknown = sorted(set(params) - {"threshold", "top_k"})
    if unknown:
        raise ApiError(
            422, f"unknown field(s) {', '.join(unknown)}: the fields are threshold and top_k"
        )
    if not files:
        raise ApiError(
            422,
            "no image in the request: send image files (multipart/form-data) or "
            '{"images": ["<base64>", ...]} (application/json)',
        )
    if len(files) > limits.max_images:
        raise ApiError(
            413, f"{len(files)} images in one request: at most {limits.max_images} (send more "
            "requests, or start the server with a larger --max-images)",
        )  # fmt: skip
    for name, data in files:
        if len(data) > limits.max_file_bytes:
            raise _file_too_large(name, len(data), limits)
    return files, params


def _file_too_large(name: str, size: int, limits: Limits) -> ApiError:
    return ApiError(
        413,
        f"image {name!r} is {size_text(size)}: over the limit of "
        f"{size_text(limits.max_file_bytes)} per image",
    )


async def _read_multipart(headers, body: bytes, limits: Limits):
    from starlette.datastructures import UploadFile
    from starlette.formparsers import MultiPartException, MultiPartParser

    async def stream():
        yield body

    parser = MultiPartParser(
        headers, stream(), max_files=limits.max_images, max_fields=16,
        max_part_size=64 * 1024,
    )  # fmt: skip
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        if "many files" in exc.message:
            raise ApiError(
                413, f"too many images in one request: at most {limits.max_images}"
            ) from None
        raise ApiError(400, f"the multipart body cannot be read: {exc.message}") from None
    files, fields = [], {}
    try:
        for key, value in form.multi_items():
            if isinstance(value, UploadFile):
                name = value.filename or f"image {len(files) + 1}"
                if value.size is not None and value.size > limits.max_file_bytes:
                    raise _file_too_large(name, value.size, limits)
                files.append((name, await value.read()))
            else:
                fields[key] = value
    finally:
        await form.close()
    return files, fields


def _read_json(body: bytes, limits: Limits):
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"the request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict) or "images" not in data:
        raise ApiError(
            422, 'the JSON body must be an object with "images": ["<base64 image>", ...]'
        )
    images = data.pop("images")
    if not isinstance(images, list):
        raise ApiError(422, '"images" must be a list of base64 strings or {"name", "data"}')
    if len(images) > limits.max_images:
        raise ApiError(413, f"{len(images)} images in one request: at most {limits.max_images}")
    files = []
    for k, entry in enumerate(images, start=1):
        name, text = f"image {k}", entry
        if isinstance(entry, dict):
            name, text = str(entry.get("name") or name), entry.get("data")
        if not isinstance(text, str):
            raise ApiError(422, f"images[{k - 1}]: expected a base64 string or {{name, data}}")
        if text.startswith("data:") and "," in text:
            text = text.split(",", 1)[1]
        text = "".join(text.split())  # lines of base64 (as `base64 FILE` wraps them) are fine
        if len(text) > limits.max_file_bytes * 4 // 3 + 8:
            raise ApiError(
                413, f"image {name!r} is over the limit of {size_text(limits.max_file_bytes)}"
            )
        try:
            files.append((name, base64.b64decode(text, validate=True)))
        except (binascii.Error, ValueError) as exc:
            raise ApiError(422, f"image {name!r} is not valid base64: {exc}") from None
    return files, data


# -- parameters and decoding --------------------------------------------------------------------


def parse_threshold(value: Any) -> float | None:
    if value is None or value == "":
        return None
    try:
        if isinstance(value, bool):  # JSON true is no number here
            raise TypeError
        threshold = float(value)
    except (TypeError, ValueError):
        raise ApiError(422, f"threshold {value!r}: expected a number from 0 to 1") from None
    if not 0.0 <= threshold <= 1.0:
        raise ApiError(422, f"threshold {threshold}: expected a number from 0 to 1")
    return threshold


def parse_top_k(value: Any, classes: int) -> int | None:
    if value is None or value == "":
        return None
    try:
        if isinstance(value, bool):
            raise TypeError
        top_k = int(value)
        if isinstance(value, float | str) and float(value) != top_k:
            raise ValueError
    except (TypeError, ValueError):
        raise ApiError(
            422, f"top_k {value!r}: expected a whole number from 1 to {classes}"
        ) from None
    if not 1 <= top_k <= classes:
        raise ApiError(422, f"top_k {top_k}: expected a whole number from 1 to {classes}")
    return top_k


def decode_image(name: str, data: bytes, max_pixels: int, read=None) -> Image.Image:
    """One image file's bytes as the predictor reads files: `read` (Predictor.read; default
    engine.data.read_image at full size) given the bytes as a named buffer. A file
    whose header claims more pixels than max_pixels, or than Pillow's MAX_IMAGE_PIXELS (past
    which Pillow warns of a decompression bomb, and past twice which it refuses), is refused
    before its pixels are decoded. (No warnings filter: that is process-wide state, and the
    requests are decoded in several threads at once.)"""
    from engine.data import ImageError, read_image

    limit = min(max_pixels, Image.MAX_IMAGE_PIXELS or max_pixels)
    try:
        with Image.open(io.BytesIO(data)) as probe:
            width, height = probe.size
    except Image.DecompressionBombError as exc:
        raise _bomb(name, str(exc)) from None
    except Exception:
        width = height = 0  # not an image: read_image says why below
    if width * height > limit:
        raise _bomb(name, f"{width}x{height} px, over the limit of {limit} pixels")
    buffer = io.BytesIO(data)
    buffer.name = name  # so an error names the upload
    try:
        return (read or read_image)(buffer)
    except ImageError as exc:
        raise ApiError(422, f"image {name!r}: {exc.reason}") from None


def _bomb(name: str, why: str) -> ApiError:
    return ApiError(413, f"image {name!r} refused as a decompression bomb: {why}")


def decode_images(
    files: list[tuple[str, bytes]], max_pixels: int, read=None
) -> list[tuple[str, Image.Image]]:
    return [(name, decode_image(name, data, max_pixels, read)) for name, data in files]
