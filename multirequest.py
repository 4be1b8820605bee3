"""multirequest: a bounded load generator for the OCR HTTP server.

Sends concurrent ``POST /ocr_service`` requests and reports, per scenario, the
request counts, errors by status, throughput and latency percentiles, and the
share of results served from the server's cache.

Scenarios (``--scenario``):

- ``distinct``       every request carries a different, never-seen image;
- ``same-uncached``  every request carries one image the server has not seen
  (identical requests should share a single OCR run);
- ``same-cached``    one image is OCR'd once first (not measured), then every
  request asks for it again (cache hits);
- ``mixed``          even requests are distinct uncached images, odd ones the
  cached image;
- ``documents``      every request carries a new PDF of ``--pages`` scanned pages
  (the images, in turn), read page by page over the workers; the report adds pages/s;
- ``all``            the original project's three measurements in one run:
  distinct, same-uncached and same-cached, one request per client by default.

"Uncached" is guaranteed in ``--mode upload`` by making every upload's bytes
unique without changing its pixels: a PNG gets an extra ``tEXt`` comment chunk
before ``IEND``, a JPEG a ``COM`` segment before its first ``SOS``, any other
format a few trailing bytes.  The content hash therefore differs while the
image decodes to exactly the same pixels, so the OCR work is the same as for
the original file.  In ``--mode filename`` the server reads the file itself, so
bytes cannot be varied: whatever the server already cached is served from its
cache, and the reported cache-hit share shows it.

The run is bounded: a request count per scenario, a per-request timeout and an
overall deadline, after which outstanding requests are abandoned.  Only
loopback URLs are accepted unless ``--allow-remote`` is given.

Exit status: 0 when every request succeeded, 1 when some failed or were cut
off by the deadline, 2 on bad usage or when the server never became ready.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import math
import os
import random
import struct
import sys
import time
import uuid
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urljoin, urlsplit

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest, HTTPResponse

SCENARIOS = ("distinct", "same-uncached", "same-cached", "mixed", "documents")
ALL_SCENARIOS = ("distinct", "same-uncached", "same-cached")
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"})
SHARED_LOAD_DIR = Path(__file__).resolve().parent.parent / "shared" / "data" / "load"
# The shared load set when it sits beside the checkout, else the repo's own sample images.
DEFAULT_IMAGES_DIR = SHARED_LOAD_DIR if SHARED_LOAD_DIR.is_dir() else Path(__file__).resolve().parent / "imgs"

# Published by the original project for 50 concurrent clients (mean / max seconds).
ORIGINAL_PUBLISHED: dict[str, dict[str, float]] = {
    "distinct": {"mean": 4.8, "max": 9.0},
    "same-uncached": {"mean": 1.14},
    "same-cached": {"mean": 0.01},
}

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------
# Pure helpers
# --------------------------------------------------------------------------


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) of ascending values, linearly interpolated
    between closest ranks (numpy's default ``linear`` method)."""
    if not sorted_values:
        raise ValueError("percentile of an empty sequence")
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile q must be within 0..100, got {q}")
    rank = (len(sorted_values) - 1) * q / 100.0
    lo = math.floor(rank)
    hi = math.ceil(rank)
    low_value = sorted_values[lo]
    return low_value + (sorted_values[hi] - low_value) * (rank - lo)


def summarize_latencies(values: Iterable[float]) -> dict[str, float | None]:
    """min / mean / p50 / p95 / p99 / max of latencies (None for all when empty)."""
    data = sorted(values)
    keys = ("min", "mean", "p50", "p95", "p99", "max")
    if not data:
        return dict.fromkeys(keys)
    return {
        "min": data[0],
        "mean": math.fsum(data) / len(data),
        "p50": percentile(data, 50),
        "p95": percentile(data, 95),
        "p99": percentile(data, 99),
        "max": data[-1],
    }


@dataclass(frozen=True)
class Outcome:
    """What happened to one request.  ``status`` is "ok" or an error key: an
    HTTP status code ("503"), "timeout", "connection", "deadline",
    "task_failed" or "bad_response"."""

    index: int
    status: str
    latency_s: float | None = None  # blocking: the request; no-block: time to result
    submit_s: float | None = None  # no-block only: the 202 round trip
    cached: bool | None = None
    detail: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def summarize_scenario(
    name: str,
    outcomes: Sequence[Outcome],
    *,
    planned: int,
    wall_s: float,
    ocr_runs: int | None = None,
) -> dict[str, Any]:
    """All reported figures for one scenario, JSON-ready (seconds as floats)."""
    ok = [o for o in outcomes if o.ok]
    errors = Counter(o.status for o in outcomes if not o.ok)
    hits = sum(1 for o in ok if o.cached)
    summary: dict[str, Any] = {
        "scenario": name,
        "requests": planned,
        "sent": len(outcomes),
        "ok": len(ok),
        "errors": dict(sorted(errors.items())),
        "error_count": sum(errors.values()),
        "not_sent": planned - len(outcomes),
        "wall_s": wall_s,
        "throughput_rps": len(ok) / wall_s if wall_s > 0 else 0.0,
        "latency_s": summarize_latencies(o.latency_s for o in ok if o.latency_s is not None),
        "cache_hits": hits,
        "cache_hit_share": hits / len(ok) if ok else None,
        "ocr_runs": ocr_runs,
    }
    submits = [o.submit_s for o in ok if o.submit_s is not None]
    if submits:
        summary["submit_latency_s"] = summarize_latencies(submits)
    samples = [o.detail for o in outcomes if not o.ok and o.detail]
    if samples:
        summary["error_samples"] = samples[:3]
    return summary


def fmt_seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 1.0:
        return f"{value * 1000:.1f} ms"
    return f"{value:.2f} s"


def format_latency_line(stats: dict[str, float | None]) -> str:
    return "  ".join(f"{k} {fmt_seconds(stats[k])}" for k in ("min", "mean", "p50", "p95", "p99", "max"))


def format_report(summary: dict[str, Any], *, context: str = "") -> str:
    """Human-readable block for one scenario (line prefixes are stable for tests)."""
    errors = summary["errors"]
    err_text = ", ".join(f"{k}: {v}" for k, v in errors.items()) if errors else "none"
    share = summary["cache_hit_share"]
    share_text = "-" if share is None else f"{share * 100:.1f}%"
    lines = [
        f"== {summary['scenario']}{f' ({context})' if context else ''} ==",
        (
            f"requests    {summary['requests']} planned, {summary['sent']} sent, {summary['ok']} ok, "
            f"{summary['error_count']} errors, {summary['not_sent']} not sent"
        ),
        f"errors      {err_text}",
        f"throughput  {summary['throughput_rps']:.2f} req/s over {summary['wall_s']:.2f} s",
    ]
    if "pages_per_s" in summary:
        lines.append(f"pages       {summary['pages_per_s']:.2f} pages/s ({summary['pages_per_request']} per document)")
    lines += [
        f"latency     {format_latency_line(summary['latency_s'])}",
    ]
    if "submit_latency_s" in summary:
        lines.append(f"submit      {format_latency_line(summary['submit_latency_s'])}")
    lines.append(f"cache hits  {summary['cache_hits']}/{summary['ok']} ({share_text})")
    runs = summary["ocr_runs"]
    lines.append(f"ocr runs    {'-' if runs is None else runs} (server /health delta)")
    return "\n".join(lines)


def format_comparison(summaries: Sequence[dict[str, Any]]) -> str:
    """This run beside the original project's published 50-client figures."""
    lines = [
        "== compared with the original project's published figures (50 clients) ==",
        f"{'scenario':<15}{'mean':>11}{'max':>11}   original",
    ]
    for s in summaries:
        orig = ORIGINAL_PUBLISHED.get(s["scenario"])
        if orig is None:
            continue
        lat = s["latency_s"]
        orig_text = " / ".join(f"{k} {v:g} s" for k, v in orig.items())
        lines.append(f"{s['scenario']:<15}{fmt_seconds(lat['mean']):>11}{fmt_seconds(lat['max']):>11}   {orig_text}")
    return "\n".join(lines)


def is_loopback_url(url: str) -> bool:
    """True when the URL's host is localhost or a loopback address (127/8, ::1)."""
    try:
        host = urlsplit(url).hostname
    except ValueError:
        return False
    if not host:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _jpeg_sos_offset(data: bytes) -> int | None:
    """Offset of the first SOS marker of a JPEG, walking its segment headers."""
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0xDA:
            return i
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # parameterless markers
            i += 2
            continue
        (length,) = struct.unpack(">H", data[i + 2 : i + 4])
        i += 2 + length
    return None


def unique_image_bytes(data: bytes, tag: str) -> bytes:
    """``data`` with ``tag`` embedded as metadata: different bytes (and content
    hash), identical pixels.  PNG: a tEXt chunk before IEND; JPEG: a COM segment
    before the first SOS; anything else: trailing bytes."""
    payload = tag.encode("utf-8")
    if data.startswith(PNG_SIGNATURE):
        iend = data.rfind(b"IEND")
        if iend >= len(PNG_SIGNATURE) + 4:
            pos = iend - 4  # the chunk's length field
            body = b"Comment\x00" + payload
            crc = zlib.crc32(b"tEXt" + body) & 0xFFFFFFFF
            chunk = struct.pack(">I", len(body)) + b"tEXt" + body + struct.pack(">I", crc)
            return data[:pos] + chunk + data[pos:]
    if data.startswith(b"\xff\xd8") and len(payload) < 65000:
        pos = _jpeg_sos_offset(data)
        if pos is not None:
            segment = b"\xff\xfe" + struct.pack(">H", len(payload) + 2) + payload
            return data[:pos] + segment + data[pos:]
    return data + b"\nmultirequest:" + payload


def build_multipart(
    fields: dict[str, str], file_field: str, filename: str, data: bytes, boundary: str
) -> tuple[bytes, str]:
    """A multipart/form-data body and its Content-Type header value."""
    parts: list[bytes] = []
    for key, value in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n{value}\r\n'.encode())
    safe_name = filename.replace('"', "_").replace("\r", "_").replace("\n", "_")
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{file_field}"; filename="{safe_name}"\r\n'
        f"Content-Type: application/octet-stream\r\n\r\n".encode()
    )
    parts.append(data)
    parts.append(f"\r\n--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def jpeg_page(data: bytes) -> tuple[bytes, int, int, str]:
    """An image as a baseline JPEG to embed in a PDF page: (bytes, width, height, colour space)."""
    import io

    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        if image.format == "JPEG" and image.mode in ("RGB", "L") and not image.info.get("progressive"):
            return data, image.width, image.height, "DeviceRGB" if image.mode == "RGB" else "DeviceGray"
        rgb = image.convert("RGB")
    out = io.BytesIO()
    rgb.save(out, "JPEG", quality=92)
    return out.getvalue(), rgb.width, rgb.height, "DeviceRGB"


def jpeg_pdf(pages: Sequence[tuple[bytes, int, int, str]], tag: str = "", dpi: float = 200.0) -> bytes:
    """A scanned-document PDF: one JPEG per page, sized so `dpi` renders it at its own pixels.

    Written directly (the JPEG bytes as they are, DCTDecode), so building one costs no
    encoding; `tag` goes in a comment, so every document has its own bytes and hash.
    """
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>", b""]
    kids = []
    for jpeg, width, height, space in pages:
        first = len(objects) + 1  # page, contents, image
        w_pt, h_pt = width * 72.0 / dpi, height * 72.0 / dpi
        content = b"q %.3f 0 0 %.3f 0 0 cm /Im0 Do Q" % (w_pt, h_pt)
        objects.append(
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 %.3f %.3f] /Contents %d 0 R"
            b" /Resources << /XObject << /Im0 %d 0 R >> >> >>" % (w_pt, h_pt, first + 1, first + 2)
        )
        objects.append(b"<< /Length %d >>\nstream\n%s\nendstream" % (len(content), content))
        objects.append(
            b"<< /Type /XObject /Subtype /Image /Width %d /Height %d /ColorSpace /%s /BitsPerComponent 8"
            b" /Filter /DCTDecode /Length %d >>\nstream\n"
            % (width, height, space.encode(), len(jpeg))
            + jpeg
            + b"\nendstream"
        )
        kids.append(b"%d 0 R" % first)
    objects[1] = b"<< /Type /Pages /Kids [%s] /Count %d >>" % (b" ".join(kids), len(kids))
    return write_pdf(objects, comment=tag.encode("ascii", "replace").replace(b"\n", b" "))


def write_pdf(objects: Sequence[bytes], comment: bytes = b"", trailer_extra: bytes = b"") -> bytes:
    """Numbered PDF objects (1 is the catalog) with a correct cross-reference table."""
    out = bytearray(b"%PDF-1.4\n%" + (comment or b"\xe2\xe3\xcf\xd3") + b"\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R %s>>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, trailer_extra, xref)
    return bytes(out)


@dataclass(frozen=True)
class RequestSpec:
    """One request: which file, and the tag making its bytes unique (None: as is).

    pages: for a document request, the images of its pages (sent as one PDF; path is the first).
    """

    path: Path
    tag: str | None
    pages: tuple[Path, ...] = ()


def plan_scenario(
    name: str, images: Sequence[Path], count: int, same_image: Path, run_id: str, pages: int = 4
) -> tuple[list[RequestSpec], RequestSpec | None]:
    """The requests of a scenario and the warm-up request to send (unmeasured)
    before it, if any.  Tags include ``run_id`` so nothing is cached beforehand."""
    if not images:
        raise ValueError("no images to send")
    cached = RequestSpec(same_image, f"{run_id}-cached")
    if name == "distinct":
        return [RequestSpec(images[i % len(images)], f"{run_id}-d{i}") for i in range(count)], None
    if name == "same-uncached":
        return [RequestSpec(same_image, f"{run_id}-same")] * count, None
    if name == "same-cached":
        return [cached] * count, cached
    if name == "mixed":
        specs = [
            RequestSpec(images[(i // 2) % len(images)], f"{run_id}-m{i}") if i % 2 == 0 else cached
            for i in range(count)
        ]
        return specs, cached
    if name == "documents":
        specs = []
        for i in range(count):
            paths = tuple(images[(i * pages + k) % len(images)] for k in range(pages))
            specs.append(RequestSpec(paths[0], f"{run_id}-doc{i}", paths))
        return specs, None
    raise ValueError(f"unknown scenario {name!r}")


def list_images(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def order_images(images: Sequence[Path], order: str, seed: int = 0) -> list[Path]:
    if order == "name":
        return sorted(images)
    if order == "size-desc":
        return sorted(images, key=lambda p: (-p.stat().st_size, p.name))
    if order == "shuffle":
        shuffled = sorted(images)
        random.Random(seed).shuffle(shuffled)
        return shuffled
    raise ValueError(f"unknown order {order!r}")


# A receipt with ~30 text lines taking about 1 s on one core: close to the work behind the
# original's published "same image" figure.  Used when present in the image directory.
# Seconds one task poll may wait on the server (it caps the wait at 30).
LONG_POLL_S = 25.0
PREFERRED_SAME_IMAGE = "sroie__img_005.jpg"


def default_same_image(images: Sequence[Path]) -> Path:
    """The image for the same-image scenarios: PREFERRED_SAME_IMAGE, else the median file size."""
    for path in images:
        if path.name == PREFERRED_SAME_IMAGE:
            return path
    return median_size_image(images)


def median_size_image(images: Sequence[Path]) -> Path:
    """The image of median file size."""
    by_size = sorted(images, key=lambda p: (p.stat().st_size, p.name))
    return by_size[(len(by_size) - 1) // 2]


# --------------------------------------------------------------------------
# HTTP
# --------------------------------------------------------------------------


class OcrClient:
    """Thin async client for the OCR server (tornado's simple HTTP client)."""

    def __init__(
        self,
        base_url: str,
        *,
        mode: str = "upload",
        block: bool = True,
        timeout: float = 120.0,
        max_clients: int = 10,
        poll_max_interval: float = 0.25,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.mode = mode
        self.block = block
        self.timeout = timeout
        self.poll_max_interval = poll_max_interval
        # force_instance: our own max_clients, not the process-wide shared client.
        self.http = AsyncHTTPClient(force_instance=True, max_clients=max(1, max_clients))
        self._file_cache: dict[Path, bytes] = {}
        self._page_cache: dict[Path, tuple[bytes, int, int, str]] = {}

    def close(self) -> None:
        self.http.close()

    def _read(self, path: Path) -> bytes:
        data = self._file_cache.get(path)
        if data is None:
            data = self._file_cache[path] = path.read_bytes()
        return data

    def build_request(self, spec: RequestSpec, timeout: float) -> HTTPRequest:
        block = "true" if self.block else "false"
        url = f"{self.base_url}/ocr_service"
        if self.mode == "filename":
            body = urlencode({"file_type": "filename", "filename": str(spec.path.resolve()), "block_flag": block})
            headers = {"Content-Type": "application/x-www-form-urlencoded"}
            return HTTPRequest(
                url,
                method="POST",
                body=body,
                headers=headers,
                request_timeout=timeout,
                connect_timeout=min(timeout, 10.0),
            )
        if spec.pages:
            data = jpeg_pdf([self.page(path) for path in spec.pages], spec.tag or "")
            name = f"{spec.path.stem}+{len(spec.pages) - 1}.pdf"
        else:
            data = self._read(spec.path)
            if spec.tag is not None:
                data = unique_image_bytes(data, spec.tag)
            name = spec.path.name
        body_bytes, content_type = build_multipart(
            {"file_type": "file", "block_flag": block}, "file", name, data, uuid.uuid4().hex
        )
        return HTTPRequest(
            url,
            method="POST",
            body=body_bytes,
            headers={"Content-Type": content_type},
            request_timeout=timeout,
            connect_timeout=min(timeout, 10.0),
        )

    def page(self, path: Path) -> tuple[bytes, int, int, str]:
        """The image as a PDF page (converted to JPEG once, before the run if prepare() was called)."""
        page = self._page_cache.get(path)
        if page is None:
            page = self._page_cache[path] = jpeg_page(self._read(path))
        return page

    def prepare(self, specs: Sequence[RequestSpec]) -> None:
        """Convert every document page up front, so no image encoding runs while measuring."""
        for spec in specs:
            for path in spec.pages:
                self.page(path)

    async def _fetch(self, request: HTTPRequest) -> tuple[str, HTTPResponse | None, str | None]:
        """(status key, response, error text); status key "ok" means a 2xx."""
        try:
            response = await self.http.fetch(request, raise_error=False)
        except HTTPClientError as exc:
            key = "timeout" if exc.code == 599 and "Timeout" in str(exc) else "connection"
            return key, None, str(exc)
        except OSError as exc:
            return "connection", None, f"{type(exc).__name__}: {exc}"
        if 200 <= response.code < 300:
            return "ok", response, None
        return str(response.code), response, _error_text(response)

    async def get_json(self, path: str, timeout: float = 5.0) -> tuple[int, dict[str, Any] | None]:
        request = HTTPRequest(
            urljoin(self.base_url + "/", path.lstrip("/")), request_timeout=timeout, connect_timeout=timeout
        )
        try:
            response = await self.http.fetch(request, raise_error=False)
        except (HTTPClientError, OSError):
            return 0, None
        return response.code, _json_or_none(response)

    async def ocr_runs(self) -> int | None:
        code, body = await self.get_json("/health")
        if code != 200 or not body or not isinstance(body.get("ocr_runs"), int):
            return None
        return int(body["ocr_runs"])

    async def wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            code, _ = await self.get_json("/readyz", timeout=2.0)
            if code == 200:
                return True
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.25)

    async def send(self, index: int, spec: RequestSpec, deadline: float) -> Outcome:
        timeout = max(0.1, min(self.timeout, deadline - time.monotonic()))
        request = self.build_request(spec, timeout)
        start = time.perf_counter()
        key, response, error = await self._fetch(request)
        elapsed = time.perf_counter() - start
        if key != "ok" or response is None:
            return Outcome(index, key, detail=error)
        body = _json_or_none(response)
        if body is None:
            return Outcome(index, "bad_response", detail="response is not a JSON object")
        if body.get("status") == "done" and ("text_lines" in body or "pages" in body):
            # Blocking answer (or a no-block request answered with its result at once).
            return Outcome(
                index,
                "ok",
                latency_s=elapsed,
                submit_s=None if self.block else elapsed,
                cached=bool(body.get("cached")),
            )
        if self.block:
            return Outcome(index, "bad_response", detail=f"blocking answer with status {body.get('status')!r}")
        status_url = body.get("status_url")
        if not isinstance(status_url, str):
            return Outcome(index, "bad_response", detail="no status_url in the 202 answer")
        return await self._poll(index, status_url, start, elapsed, deadline)

    async def _poll(self, index: int, status_url: str, start: float, submit_s: float, deadline: float) -> Outcome:
        url = urljoin(self.base_url + "/", status_url.lstrip("/"))
        give_up = min(deadline, time.monotonic() + self.timeout)
        # Long-poll (?wait=N: the server answers as soon as the task is done), at once and
        # then again; a server without long-poll answers at once, so the pause between
        # polls backs off from 10 ms to poll_max_interval.
        interval = 0.0
        while True:
            remaining = give_up - time.monotonic()
            if remaining <= 0:
                return Outcome(index, "timeout", detail="task not done within the timeout")
            await asyncio.sleep(min(interval, remaining))
            interval = min(max(interval * 1.5, 0.01), self.poll_max_interval)
            wait = max(0.0, min(LONG_POLL_S, remaining - 1.0))
            request = HTTPRequest(
                f"{url}?wait={wait:.1f}",
                request_timeout=max(0.1, min(wait + 10.0, remaining)),
                connect_timeout=max(0.1, min(10.0, remaining)),
            )
            key, response, error = await self._fetch(request)
            if key != "ok" or response is None:
                return Outcome(index, f"poll {key}", detail=error)
            body = _json_or_none(response)
            status = body.get("status") if body else None
            if status == "done":
                return Outcome(
                    index,
                    "ok",
                    latency_s=time.perf_counter() - start,
                    submit_s=submit_s,
                    cached=bool(body.get("cached")) if body else None,
                )
            if status == "failed":
                err = body.get("error") if body else None
                return Outcome(index, "task_failed", detail=json.dumps(err)[:300])
            if status not in ("queued", "running"):
                return Outcome(index, "bad_response", detail=f"task status {status!r}")


def _json_or_none(response: HTTPResponse) -> dict[str, Any] | None:
    try:
        body = json.loads(response.body or b"")
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def _error_text(response: HTTPResponse) -> str:
    body = _json_or_none(response)
    err = body.get("error") if body else None
    if isinstance(err, dict):
        return f"{response.code} {err.get('code')}: {err.get('message')}"[:300]
    return f"{response.code} {(response.body or b'')[:200]!r}"


# --------------------------------------------------------------------------
# Running scenarios
# --------------------------------------------------------------------------


class Progress:
    """tqdm on stderr when available, else a line per 10%."""

    def __init__(self, total: int, desc: str, enabled: bool) -> None:
        self.total, self.desc, self.enabled, self.done, self._bar = total, desc, enabled, 0, None
        self._next_pct = 10
        if enabled:
            try:
                from tqdm import tqdm

                self._bar = tqdm(total=total, desc=desc, file=sys.stderr, unit="req", leave=False)
            except ImportError:
                self._bar = None

    def update(self) -> None:
        self.done += 1
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(1)
            return
        pct = 100 * self.done // max(1, self.total)
        if pct >= self._next_pct or self.done == self.total:
            print(f"{self.desc}: {self.done}/{self.total}", file=sys.stderr, flush=True)
            self._next_pct = pct - pct % 10 + 10

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


async def run_requests(
    client: OcrClient,
    specs: Sequence[RequestSpec],
    concurrency: int,
    deadline: float,
    on_done: Callable[[], None] | None = None,
) -> tuple[list[Outcome], float]:
    """Send ``specs`` from ``concurrency`` clients (each one request at a time)
    until all are sent or ``deadline`` (monotonic) passes; requests still
    outstanding then count as "deadline".  Returns the outcomes and wall time."""
    outcomes: list[Outcome] = []
    next_index = 0
    in_flight: dict[int, int] = {}  # worker -> request index

    async def worker(worker_id: int) -> None:
        nonlocal next_index
        while next_index < len(specs) and time.monotonic() < deadline:
            index = next_index
            next_index += 1
            in_flight[worker_id] = index
            outcome = await client.send(index, specs[index], deadline)
            del in_flight[worker_id]
            outcomes.append(outcome)
            if on_done is not None:
                on_done()

    start = time.perf_counter()
    tasks = [asyncio.ensure_future(worker(w)) for w in range(max(1, min(concurrency, len(specs))))]
    _, pending = await asyncio.wait(tasks, timeout=max(0.0, deadline - time.monotonic()) + 1.0)
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.gather(*pending, return_exceptions=True)
        outcomes.extend(Outcome(i, "deadline", detail="overall deadline reached") for i in in_flight.values())
    for task in tasks:
        if task.done() and not task.cancelled() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]
    wall = time.perf_counter() - start
    return sorted(outcomes, key=lambda o: o.index), wall


async def run_scenario(
    client: OcrClient,
    name: str,
    images: Sequence[Path],
    *,
    count: int,
    concurrency: int,
    same_image: Path,
    deadline: float,
    run_id: str,
    progress: bool = True,
    pages: int = 4,
) -> tuple[dict[str, Any], list[Outcome]]:
    """Warm up if the scenario needs it, run it, and summarise it."""
    specs, warmup = plan_scenario(name, images, count, same_image, run_id, pages)
    client.prepare(specs)
    if warmup is not None:
        w = await client.send(-1, warmup, deadline)
        if not w.ok:
            raise RuntimeError(f"{name}: warm-up request failed: {w.status} {w.detail or ''}")
    runs_before = await client.ocr_runs()
    bar = Progress(len(specs), name, progress)
    try:
        outcomes, wall = await run_requests(client, specs, concurrency, deadline, bar.update)
    finally:
        bar.close()
    runs_after = await client.ocr_runs()
    runs = runs_after - runs_before if runs_before is not None and runs_after is not None else None
    summary = summarize_scenario(name, outcomes, planned=len(specs), wall_s=wall, ocr_runs=runs)
    if name == "documents":
        summary["pages_per_request"] = pages
        summary["pages_per_s"] = summary["throughput_rps"] * pages
    return summary, outcomes


# --------------------------------------------------------------------------
# Plot
# --------------------------------------------------------------------------


def plot_latencies(results: Sequence[tuple[dict[str, Any], list[Outcome]]], path: Path, title: str) -> None:
    """Latency CDFs (log time axis) and box plots per scenario, PNG via Agg."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_cdf, ax_box) = plt.subplots(1, 2, figsize=(12, 4.8))
    labels: list[str] = []
    data: list[list[float]] = []
    for summary, outcomes in results:
        values = sorted(o.latency_s for o in outcomes if o.ok and o.latency_s is not None)
        if not values:
            continue
        label = summary["scenario"]
        labels.append(label)
        data.append(values)
        ys = [(i + 1) / len(values) for i in range(len(values))]
        ax_cdf.step(values, ys, where="post", label=f"{label} (n={len(values)})")
    ax_cdf.set_xscale("log")
    ax_cdf.set_xlabel("latency (s, log scale)")
    ax_cdf.set_ylabel("share of requests")
    ax_cdf.set_title("latency CDF")
    ax_cdf.grid(True, which="both", alpha=0.3)
    if labels:
        ax_cdf.legend(loc="lower right")
        ax_box.boxplot(data, tick_labels=labels, whis=(1, 99), showmeans=True)
    ax_box.set_yscale("log")
    ax_box.set_ylabel("latency (s, log scale)")
    ax_box.set_title("per scenario (whiskers p1-p99, triangle = mean)")
    ax_box.grid(True, axis="y", which="both", alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="multirequest.py",
        description="Bounded concurrent load against the OCR HTTP server.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--url", default="http://127.0.0.1:8888", help="server base URL")
    p.add_argument("--images", type=Path, default=DEFAULT_IMAGES_DIR, help="directory of images to send")
    p.add_argument("--concurrency", type=int, default=50, help="concurrent clients")
    p.add_argument(
        "--requests",
        type=int,
        default=None,
        help="requests per scenario (default: 200; with --scenario all: one per client)",
    )
    p.add_argument("--scenario", choices=(*SCENARIOS, "all"), default="distinct")
    p.add_argument(
        "--mode",
        choices=("upload", "filename"),
        default="upload",
        help="upload the bytes, or send a server-side path (must lie in its allowed roots)",
    )
    p.add_argument(
        "--no-block", action="store_true", help="fire-and-forget submissions, then poll status_url until done"
    )
    p.add_argument(
        "--image",
        default=None,
        help="file name (in --images) for the same-image scenarios; default: a receipt from the shared set, else the median file size",
    )
    p.add_argument(
        "--order",
        choices=("name", "size-desc", "shuffle"),
        default="name",
        help="order in which distinct images are sent",
    )
    p.add_argument("--pages", type=int, default=4, help="pages per PDF in the documents scenario")
    p.add_argument("--timeout", type=float, default=120.0, help="per-request timeout, seconds")
    p.add_argument("--deadline", type=float, default=900.0, help="overall time limit for the run, seconds")
    p.add_argument("--wait-ready", type=float, default=60.0, help="seconds to wait for GET /readyz == 200")
    p.add_argument("--json", dest="json_path", type=Path, default=None, help="write the figures as JSON")
    p.add_argument("--plot", type=Path, default=None, help="write latency distributions as PNG (matplotlib)")
    p.add_argument("--allow-remote", action="store_true", help="allow a non-loopback --url")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    if args.concurrency < 1:
        p.error("--concurrency must be >= 1")
    if args.pages < 1:
        p.error("--pages must be >= 1")
    if args.requests is not None and args.requests < 1:
        p.error("--requests must be >= 1")
    if args.timeout <= 0 or args.deadline <= 0:
        p.error("--timeout and --deadline must be > 0")
    return args


async def run(args: argparse.Namespace) -> int:
    if not is_loopback_url(args.url) and not args.allow_remote:
        print(f"refusing non-loopback URL {args.url!r}: pass --allow-remote to load a remote server", file=sys.stderr)
        return 2
    if not args.images.is_dir():
        print(f"image directory not found: {args.images}", file=sys.stderr)
        return 2
    images = order_images(list_images(args.images), args.order)
    if not images:
        print(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {args.images}", file=sys.stderr)
        return 2
    if args.image is not None:
        same_image = args.images / args.image
        if not same_image.is_file():
            print(f"--image {args.image!r} not found in {args.images}", file=sys.stderr)
            return 2
    else:
        same_image = default_same_image(images)
    scenarios = ALL_SCENARIOS if args.scenario == "all" else (args.scenario,)
    count = args.requests or (args.concurrency if args.scenario == "all" else 200)
    deadline = time.monotonic() + args.deadline
    context = f"{args.mode}, {'no-block' if args.no_block else 'blocking'}, concurrency {args.concurrency}"
    if args.mode == "filename":
        print(
            "note: --mode filename sends server paths, so images the server already cached "
            "are served from its cache (see the cache-hit share)",
            file=sys.stderr,
        )

    client = OcrClient(
        args.url, mode=args.mode, block=not args.no_block, timeout=args.timeout, max_clients=args.concurrency + 2
    )
    results: list[tuple[dict[str, Any], list[Outcome]]] = []
    try:
        if not await client.wait_ready(min(args.wait_ready, args.deadline)):
            print(f"server at {args.url} not ready (GET /readyz) within {args.wait_ready:g} s", file=sys.stderr)
            return 2
        run_id = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
        print(
            f"multirequest: {args.url}, {len(images)} images from {args.images}, "
            f"same image {same_image.name}, {count} requests per scenario ({context})"
        )
        for name in scenarios:
            if time.monotonic() >= deadline:
                print(f"overall deadline reached; skipping {name}", file=sys.stderr)
                break
            summary, outcomes = await run_scenario(
                client,
                name,
                images,
                count=count,
                concurrency=args.concurrency,
                same_image=same_image,
                deadline=deadline,
                run_id=run_id,
                progress=not args.quiet,
                pages=args.pages,
            )
            results.append((summary, outcomes))
            print(format_report(summary, context=context), flush=True)
    finally:
        client.close()

    summaries = [s for s, _ in results]
    if args.scenario == "all" and summaries:
        print(format_comparison(summaries))
    if args.json_path is not None:
        doc = {
            "tool": "multirequest",
            "url": args.url,
            "images_dir": str(args.images),
            "image_count": len(images),
            "same_image": same_image.name,
            "mode": args.mode,
            "block": not args.no_block,
            "concurrency": args.concurrency,
            "requests_per_scenario": count,
            "timeout_s": args.timeout,
            "uncached_method": "unique metadata per upload (PNG tEXt chunk / JPEG COM segment)"
            if args.mode == "upload"
            else "none (filename mode)",
            "scenarios": summaries,
            "original_published": ORIGINAL_PUBLISHED,
        }
        args.json_path.write_text(json.dumps(doc, indent=2) + "\n")
    if args.plot is not None and results:
        plot_latencies(results, args.plot, f"{args.url} - {context}")
    failed = any(s["error_count"] or s["not_sent"] for s in summaries)
    return 1 if failed or len(summaries) < len(scenarios) else 0


def main(argv: Sequence[str] | None = None) -> int:
    return asyncio.run(run(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
