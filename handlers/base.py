"""JSON request handler base: every response, errors included, is JSON."""

from __future__ import annotations

import logging
import re
import time
from typing import Any, NoReturn

import orjson
import tornado
from tornado import httputil, web

from handlers.errors import ApiError, error_body

log = logging.getLogger("ocr_server")

# orjson: a cached result (a box and a score per text line) encodes ~8x faster than with
# json (6 us vs 53 us for a 60-line receipt): 12% of a cache hit. UTF-8 out, NaN as null.
JSON_OPTIONS = orjson.OPT_NON_STR_KEYS


def encode_json(body: Any) -> bytes:
    return orjson.dumps(body, option=JSON_OPTIONS)


# A caller's X-Request-ID is echoed and logged, so one request can be followed across services.
REQUEST_ID_HEADER = "X-Request-ID"
MAX_REQUEST_ID_CHARS = 128
_NOT_ID_CHARS = re.compile(r"[^A-Za-z0-9._:/+=-]")


def clean_request_id(value: str | None) -> str | None:
    """The id as it may appear in a header and a log line: bounded, no spaces or controls."""
    if not value:
        return None
    return _NOT_ID_CHARS.sub("_", value[:MAX_REQUEST_ID_CHARS])


# Every method some handler serves. Metrics label any other method "other": any token is a
# valid HTTP method, and each would otherwise become a new time series (curl -X FOOBAR).
SERVED_METHODS = ("GET", "HEAD", "POST", "DELETE")


def method_label(method: str | None) -> str:
    return method if method in SERVED_METHODS else "other"


# Handler class -> the methods it implements: a class's methods do not change, and working
# them out (two getattr per supported method) was a few microseconds of every request.
_SERVED: dict[type, tuple[str, ...]] = {}


def served_methods(handler: web.RequestHandler) -> list[str]:
    """The methods this handler implements (Tornado's default ones answer 405)."""
    cls = type(handler)
    served = _SERVED.get(cls)
    if served is None:
        served = _SERVED[cls] = tuple(
            method
            for method in handler.SUPPORTED_METHODS
            if getattr(cls, method.lower(), None) is not getattr(web.RequestHandler, method.lower(), None)
        )
    return list(served)


def allowed_methods(handler: web.RequestHandler) -> str:
    """The Allow header."""
    return ", ".join(served_methods(handler))


def method_not_allowed(handler: web.RequestHandler) -> dict[str, dict[str, str]]:
    """Set the Allow header and give the JSON body of a 405."""
    allow = allowed_methods(handler)
    handler.set_header("Allow", allow)
    return error_body(
        "method_not_allowed", f"{handler.request.method} is not allowed on {handler.request.path}; use {allow}"
    )


# Requests whose answer is not written yet: at shutdown, the server lets them finish writing
# (their `503 shutting_down` included) before it closes the connections.
OPEN_REQUESTS: set[web.RequestHandler] = set()


# Only POST /ocr_service takes a body (its handler raises the limit for itself). Any other
# request's body is refused past this size, before it is read: left to Tornado, up to 100 MB
# of it would be buffered in memory, outside web_server.max_buffered_bytes.
NO_BODY_BYTES = 64 * 1024


def refuse_unserved_method(handler: web.RequestHandler) -> None:
    """A JSON 405 before any body is read: the method is the first mistake."""
    served = _SERVED.get(type(handler))
    if served is None:
        served_methods(handler)
        served = _SERVED[type(handler)]
    if handler.request.method not in served:
        refuse_in_prepare(handler, web.HTTPError(405))


def has_body(request: httputil.HTTPServerRequest) -> bool:
    """Whether a request has a body still to come: a declared length other than 0, or chunked."""
    declared = header_value(request.headers, "Content-Length")
    chunked = header_value(request.headers, "Transfer-Encoding") is not None
    return chunked or (declared is not None and declared.strip() != "0")


def refuse_in_prepare(handler: web.RequestHandler, error: Exception) -> None:
    """Refuse a request from prepare(), where nothing of its body has been read.

    Tornado closes a connection whose request body was not read, after an answer that did not
    say so: a client's next request on it was reset. A request without a body is answered
    where its method would run, once its (empty) body is in, and the connection stays open;
    one with a body is answered now, with Connection: close (see closes_connection)."""
    if not has_body(handler.request):

        def answer(*_args: Any, **_kwargs: Any) -> None:
            raise error

        setattr(handler, handler.request.method.lower(), answer)  # found before the class's method
        return
    refuse_with_close(handler, error)


def refuse_with_close(handler: web.RequestHandler, error: Exception) -> NoReturn:
    """Raise `error` from prepare() for a request whose body will not be read: the answer says
    Connection: close (Tornado closes the connection after it)."""
    handler.closes_connection = True  # type: ignore[attr-defined]
    raise error


def header_value(headers: httputil.HTTPHeaders, name: str) -> str | None:
    """headers.get(name) in one lookup, and without the KeyError that Mapping.get raises and
    catches for an absent header (most of the ones a request handler looks for are absent)."""
    values = headers.get_list(name)
    if not values:
        return None
    return values[0] if len(values) == 1 else ",".join(values)  # joined, as headers[name] is


# Tornado's own defaults (RequestHandler.clear) and the JSON ones every answer here carries.
SERVER_HEADER = f"TornadoServer/{tornado.version}"
JSON_CONTENT_TYPE = "application/json; charset=UTF-8"


class _HttpDate:
    """The Date header's text for the current second: Tornado formats it anew for every
    request (email.utils.formatdate), a tenth of the web layer's own work for a cache hit."""

    second = -1
    text = ""

    @classmethod
    def now(cls) -> str:
        second = int(time.time())
        if second != cls.second:
            cls.text, cls.second = httputil.format_timestamp(second), second
        return cls.text


http_date = _HttpDate.now


def refuse_before_body(handler: web.RequestHandler) -> None:
    """For a streaming handler that takes no body: a 405 for a method it does not serve, then
    a JSON 413 for a declared body over NO_BODY_BYTES, both before any of the body is read."""
    refuse_unserved_method(handler)
    declared = handler.request.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > NO_BODY_BYTES:
        refuse_with_close(handler, ApiError(413, "body_too_large", f"{handler.request.path} takes no request body"))


class AnyMethod(tuple):
    """Methods listed (the ones a handler may serve), yet containing any method name: Tornado
    lets every request reach prepare(), which answers one the handler does not serve with its
    405 (Tornado's own check, before prepare, closed a connection without saying so)."""

    def __contains__(self, method: object) -> bool:
        return True


# Streaming: prepare() runs as soon as the headers are in, so a body can be refused (with a
# JSON 413) before any of it is read; what is sent anyway is dropped as it arrives.
@web.stream_request_body
class JsonHandler(web.RequestHandler):
    SUPPORTED_METHODS = AnyMethod(web.RequestHandler.SUPPORTED_METHODS)
    # Extra fields for the access log line (request id, task id, cache hit).
    log_fields: dict[str, Any]
    request_id: str | None = None
    # Refused before its body was read (refuse_with_close): the answer says Connection: close.
    closes_connection = False

    def initialize(self, **kwargs: Any) -> None:
        OPEN_REQUESTS.add(self)
        self.log_fields = {}
        if self.request_id:
            self.log_fields["request_id"] = self.request_id
        for name, value in kwargs.items():
            setattr(self, name, value)

    def clear(self) -> None:
        """RequestHandler.clear() with the JSON defaults set in the same go: the same headers
        in the same order (Server, Content-Type, Date, then ours), without a set_header call
        (and its value check) per header or a Date formatted per request. Runs again when an
        error clears the headers, so the request id survives into error answers."""
        headers = {
            "Server": SERVER_HEADER,
            "Content-Type": JSON_CONTENT_TYPE,
            "Date": http_date(),
            "Cache-Control": "no-store",
            # A browser must take an answer for the JSON it says it is (OCR'd text is untrusted).
            "X-Content-Type-Options": "nosniff",
        }
        # clean_request_id leaves only characters that are safe in a header value.
        self.request_id = clean_request_id(header_value(self.request.headers, REQUEST_ID_HEADER))
        if self.request_id:
            headers[REQUEST_ID_HEADER] = self.request_id
        if self.closes_connection:
            headers["Connection"] = "close"
        self._headers = httputil.HTTPHeaders(headers)
        self.set_default_headers()
        self._write_buffer = []
        self._status_code = 200
        self._reason = httputil.responses[200]

    def prepare(self) -> None:
        refuse_before_body(self)

    def decode_argument(self, value: bytes, name: str | None = None) -> str:
        """Tornado's, but bytes that are not UTF-8 get our JSON 4xx instead of a bare
        `http_error`: in the path (a task id, a preview token) they name nothing that exists,
        so the lookup answers its 404; in a query argument the field is invalid."""
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            if name is None:  # a path argument
                return value.decode("utf-8", "replace")
            raise ApiError(400, "invalid_field", f"{name} is not valid UTF-8") from None

    def data_received(self, chunk: bytes) -> None:
        pass  # no handler but OcrHandler (which overrides this) reads a body

    def finish(self, chunk: Any = None) -> Any:
        try:
            return super().finish(chunk)
        finally:
            OPEN_REQUESTS.discard(self)

    def on_connection_close(self) -> None:
        OPEN_REQUESTS.discard(self)
        super().on_connection_close()

    def write_json(self, body: Any, status: int = 200) -> None:
        self.set_status(status)
        self.finish(encode_json(body))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, ApiError):
            if exc.retry_after is not None:
                self.set_header("Retry-After", str(exc.retry_after))
            body = error_body(exc.code, exc.message)
        elif status_code == 405:
            body = method_not_allowed(self)
        elif isinstance(exc, web.HTTPError) and status_code < 500:
            body = error_body("http_error", exc.log_message or self._reason)
        elif status_code < 500:
            body = error_body("http_error", self._reason)
        else:
            body = error_body("internal_error", "internal server error")
        self.log_fields["error"] = body["error"]["code"]
        self.finish(encode_json(body))


class NotFoundHandler(JsonHandler):
    # An unknown path is a 404 whatever the method, not a 405 with nothing to Allow.
    SUPPORTED_METHODS = AnyMethod()

    def prepare(self) -> None:
        refuse_in_prepare(self, ApiError(404, "not_found", f"no such endpoint: {self.request.path}"))
