"""Request bodies read under the edge's size limit: refused by Content-Length, or cut off while streaming."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

from starlette.datastructures import FormData
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request

from adapters.schemas import SchemaError, parse_json
from adapters.status import EdgeError, bad_request, too_large


class BodyError(Exception):
    """The body cannot be used; `error` says how to answer."""

    def __init__(self, error: EdgeError) -> None:
        super().__init__(error.message)
        self.error = error


def _too_large(limit: int) -> BodyError:
    return BodyError(too_large(f"the request body is over the limit of {limit} bytes"))


async def _limited(request: Request, limit: int) -> AsyncGenerator[bytes, None]:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    seen = 0
    async for chunk in request.stream():
        seen += len(chunk)
        if seen > limit:
            raise _too_large(limit)
        yield chunk


async def read_json(request: Request, limit: int) -> Any:
    """The JSON body; BodyError if too large or not JSON."""
    body = b"".join([chunk async for chunk in _limited(request, limit)])
    try:
        return parse_json(body)
    except SchemaError as exc:
        raise BodyError(exc.error) from None


async def read_form(request: Request, limit: int) -> FormData:
    """A multipart/form-data body; files are spooled to disk past 1 MB by Starlette."""
    # Text fields may be long (history as JSON); the byte limit bounds them all anyway.
    parser = MultiPartParser(request.headers, _limited(request, limit), max_files=4, max_part_size=limit)
    try:
        return FormData(await parser.parse())
    except MultiPartException as exc:
        raise BodyError(bad_request(f"bad multipart body: {exc.message}")) from None


def is_multipart(request: Request) -> bool:
    """Whether the body is multipart/form-data."""
    return request.headers.get("content-type", "").lower().startswith("multipart/form-data")
