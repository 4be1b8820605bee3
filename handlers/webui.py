"""The browser WebUI: `/` serves static/index.html, `/static/<file>` its script and style.

Everything the page needs ships in static/ (no CDN), so it works on an offline host.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from tornado import web

from handlers.base import (
    REQUEST_ID_HEADER,
    AnyMethod,
    clean_request_id,
    header_value,
    method_not_allowed,
    refuse_before_body,
)
from handlers.errors import ApiError, error_body

STATIC_DIR = Path(__file__).resolve().parents[1] / "static"

# The page only talks to this server and draws uploaded images from blob: URLs;
# the policy makes any accidental third-party load fail loudly in the browser.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)


# Streaming, so prepare() sees a request before its body: Tornado would otherwise read the body
# first and answer one over its 64 KiB limit with a bare 400, not this JSON 405 or 413.
@web.stream_request_body
class StaticHandler(web.StaticFileHandler):
    """Static files with the API's JSON error bodies and a bounded metrics label."""

    SUPPORTED_METHODS = AnyMethod(web.StaticFileHandler.SUPPORTED_METHODS)
    # Read by the access log and the metrics: one label for every static file.
    endpoint = "/static/{path}"
    closes_connection = False  # see handlers.base.refuse_with_close

    def set_default_headers(self) -> None:
        self.set_header("X-Content-Type-Options", "nosniff")
        # The request id is echoed and logged as on the API's endpoints (errors included:
        # this runs again when an error clears the headers).
        request_id = clean_request_id(header_value(self.request.headers, REQUEST_ID_HEADER))
        if request_id:
            self.set_header(REQUEST_ID_HEADER, request_id)
            self.log_fields = {"request_id": request_id}
        if self.closes_connection:
            self.set_header("Connection", "close")

    def prepare(self) -> None:
        refuse_before_body(self)  # as on the API's endpoints

    def data_received(self, chunk: bytes) -> None:
        pass  # a GET's body (at most 64 KiB) means nothing here

    def set_extra_headers(self, path: str) -> None:
        # Revalidate every time (ETag makes that cheap): a deploy is seen at once.
        self.set_header("Cache-Control", "no-cache")
        # On every file, not only on `/`: /static/index.html is the same page.
        self.set_header("Content-Security-Policy", CONTENT_SECURITY_POLICY)
        self.set_header("X-Frame-Options", "DENY")

    def validate_absolute_path(self, root: str, absolute_path: str) -> str | None:
        # Tornado hands a NUL byte (/static/%00) on to os.path, which raises: a 500.
        if "\x00" in absolute_path:
            raise web.HTTPError(404)
        inside = os.path.abspath(root)
        if (absolute_path == inside or absolute_path.startswith(inside + os.sep)) and os.path.isdir(absolute_path):
            raise web.HTTPError(404)  # a folder inside: Tornado's 403 "is not a file" read as "outside"
        return super().validate_absolute_path(root, absolute_path)

    def get_content_type(self) -> str:
        content_type = super().get_content_type()
        # The files are UTF-8; say so rather than leave the browser to guess.
        if content_type.startswith("text/") and "charset" not in content_type:
            content_type += "; charset=utf-8"
        return content_type

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, ApiError):
            body = error_body(exc.code, exc.message)
        elif status_code == 404:
            body = error_body("not_found", f"no such file: {self.request.path}")
        elif status_code == 403:
            body = error_body("forbidden_path", "that path is outside the static folder")
        elif status_code == 405:
            body = method_not_allowed(self)
        elif status_code < 500:
            body = error_body("http_error", self._reason)
        else:
            body = error_body("internal_error", "internal server error")
        self.finish(json.dumps(body))


class IndexHandler(StaticHandler):
    """`/`: the page itself."""

    endpoint = "/"

    async def get(self, path: str = "", include_body: bool = True) -> None:
        # The route captures nothing; always answer with the page.
        await super().get("index.html", include_body)

    async def head(self, path: str = "") -> None:
        await self.get(path, include_body=False)


def webui_routes() -> list[tuple[str, type, dict[str, Any]]]:
    static = {"path": str(STATIC_DIR)}
    return [
        (r"/", IndexHandler, static),
        (r"/static/(.*)", StaticHandler, static),
    ]
