"""Server configuration: config.json's shape, its embedded defaults and its validation.

The shape follows the original OCRWebServer project (``web_server.port``,
``ocr.process.number``, ``ocr.process.max_task_number``, ``ocr.predict_system.*``,
``service.time``, ``service.img_number``) and adds what a production deployment needs.
Unknown keys and wrong types fail at start-up with the key's dotted path in the message.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import types
import typing
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from models import EngineOptions, default_family
from ocr_pool.cpus import read_usable_cpus

REPO_DIR = Path(__file__).resolve().parent
ENGINES = ("onnxruntime", "openvino", "paddle")
BACKENDS = ("memory", "redis")


class ConfigError(ValueError):
    """config.json is unreadable, has an unknown key or a value of the wrong type."""


@dataclass(frozen=True)
class WebServerSettings:
    port: int = 8888
    # Loopback by default: exposing the service is a deliberate choice ("0.0.0.0").
    host: str = "127.0.0.1"
    # Upload limit, enforced from Content-Length and while streaming the body.
    max_body_bytes: int = 20 * 1024 * 1024
    # Request bodies held in memory at once, all requests together; past it: 503.
    max_buffered_bytes: int = 512 * 1024 * 1024
    # `filename` requests may only read inside these folders (relative to config.json).
    allowed_roots: tuple[str, ...] = ("./imgs",)
    # Seconds in-flight work may take to finish after SIGTERM.
    shutdown_grace: float = 30.0
    # Seconds a connection may sit without a complete request head (idle keep-alive,
    # slow headers) before it is closed.
    idle_timeout: float = 60.0
    # Seconds a client may take to send a request body. A stalled upload is cut, so it
    # cannot hold its share of max_buffered_bytes (and a connection) for ever.
    body_timeout: float = 120.0


@dataclass(frozen=True)
class ProcessSettings:
    number: int = 2
    max_task_number: int = 200
    # Tasks waiting for a worker; beyond this new work gets 503 + Retry-After.
    queue_size: int = 64
    # Seconds a task may wait for a worker (then 503 queue_timeout, no worker touched), and
    # seconds it may run once started (then its worker is killed and the client gets 504).
    task_timeout: float = 60.0
    # Seconds a worker may take to import its engine and load the models.
    start_timeout: float = 180.0


@dataclass(frozen=True)
class OcrSettings:
    # OpenVINO: on CPUs with bf16 units it computes in bf16 (precision "auto"), ~1.45x the
    # images/s of onnxruntime at the same accuracy; onnxruntime needs a quarter of the memory.
    engine: str = "openvino"
    process: ProcessSettings = field(default_factory=ProcessSettings)
    # Engine options (see models.EngineOptions); cpu_threads defaults to usable CPUs / workers.
    predict_system: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ServiceSettings:
    # Cache TTL in seconds (original meaning of service.time).
    time: float = 600.0
    # Cache capacity in images (original meaning of service.img_number).
    img_number: int = 1000
    # Finished fire-and-forget tasks kept for polling (each kept at least `time` seconds
    # unless this many newer ones push it out).
    task_number: int = 10000
    # Bytes of cached results, and of finished task records, kept in this process: measured
    # as their JSON (a document's result can be megabytes), least recently used evicted past
    # it. Memory held is ~10x the JSON (Python objects; README "Configuration"). img_bytes 0
    # keeps no result, as img_number 0 does; a result larger than the budget is not cached.
    img_bytes: int = 256 * 1024 * 1024
    task_bytes: int = 256 * 1024 * 1024
    # Seconds an image that crashed workers or ran past task_timeout is remembered by its cache
    # key; repeats get the same error at once instead of killing a worker again. 0: never.
    failure_ttl: float = 60.0
    # "memory" (this process only) or "redis" (shared by every node using the same Redis).
    backend: str = "memory"
    redis_url: str = "redis://127.0.0.1:6379/0"
    # Key prefix, so several deployments (or engine versions) can share one Redis.
    redis_prefix: str = "ocr:"


@dataclass(frozen=True)
class DocumentSettings:
    """PDFs and multi-page TIFFs: each page is rendered (in a worker) and OCR'd as an image."""

    # More pages than this: 413 too_many_pages (PDF and multi-page TIFF alike).
    max_pdf_pages: int = 100
    # PDF pages become pixels at this resolution, then the longest side and the total
    # pixels are capped (a poster-sized page is rendered smaller, never as a bomb).
    dpi: float = 200.0
    max_page_side: int = 4000
    max_page_pixels: int = 16_000_000
    # page_images=true: the JPEG previews of pages are kept in memory up to this many bytes
    # (the least recently used dropped first); 0 keeps none.
    preview_cache_bytes: int = 64 * 1024 * 1024


@dataclass(frozen=True)
class Settings:
    web_server: WebServerSettings = field(default_factory=WebServerSettings)
    ocr: OcrSettings = field(default_factory=OcrSettings)
    service: ServiceSettings = field(default_factory=ServiceSettings)
    documents: DocumentSettings = field(default_factory=DocumentSettings)
    # Directory relative paths (allowed roots, filenames) are resolved against.
    base_dir: str = str(REPO_DIR)

    def engine_options(self, usable_cpus: int | None = None) -> EngineOptions:
        """The workers' engine options; cpu_threads defaults to usable CPUs / workers.

        usable_cpus: the CPUs this process may use (affinity and cgroup quota), read if None.
        """
        options = dict(self.ocr.predict_system)
        if "cpu_threads" not in options:
            cpus = read_usable_cpus() if usable_cpus is None else usable_cpus
            options["cpu_threads"] = max(1, cpus // self.ocr.process.number)
        for key in ("det_model_dir", "cls_model_dir", "rec_model_dir", "rec_char_dict_path"):
            if options.get(key):
                options[key] = str(Path(self.base_dir, os.path.expanduser(options[key])))
        return EngineOptions(engine=self.ocr.engine, **options)

    def model_family(self) -> str:
        return str(self.ocr.predict_system.get("model") or default_family(self.ocr.engine))

    def with_listen(self, port: int | None = None, host: str | None = None) -> Settings:
        """A copy listening elsewhere (command-line overrides)."""
        changes = {name: value for name, value in (("port", port), ("host", host)) if value is not None}
        moved = dataclasses.replace(self, web_server=dataclasses.replace(self.web_server, **changes))
        _check_ranges(moved)  # --port 70000 is refused as web_server.port would be
        return moved

    def allowed_root_paths(self) -> list[Path]:
        return [Path(os.path.realpath(Path(self.base_dir, root))) for root in self.web_server.allowed_roots]


MAX_CONFIG_INT = 2**53  # the largest integer a JSON number carries exactly
# More OCR processes than this is a typo (each loads the models: 150-800 MB).
MAX_PROCESSES = 256


def _type_ok(value: Any, hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, arg) for arg in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        # Bounded: a 400-digit count would pass every range check and overflow a timer later.
        return isinstance(value, int) and not isinstance(value, bool) and abs(value) <= MAX_CONFIG_INT
    if hint is float:
        # Finite: JSON's Infinity or 1e999 passed the range checks and broke timers and TTLs.
        # Also bounded: 1e300 s passed as a TTL broke Redis's expiry arguments.
        return (
            isinstance(value, (int, float))
            and not isinstance(value, bool)
            and math.isfinite(value)
            and abs(value) <= MAX_CONFIG_INT
        )
    if hint is str:
        return isinstance(value, str)
    if origin is tuple:
        (item_hint, *_rest) = typing.get_args(hint)
        return isinstance(value, list) and all(_type_ok(v, item_hint) for v in value)
    if origin is dict:
        return isinstance(value, dict)
    return isinstance(value, hint)


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def _build(cls: type, data: Any, path: str) -> Any:
    """Build dataclass `cls` from a JSON object, checking keys and types."""
    if not isinstance(data, dict):
        raise ConfigError(f"{path or 'config'}: expected an object, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        where = f"{path}." if path else ""
        allowed = ", ".join(sorted(names - {"base_dir"}))
        raise ConfigError(f"unknown key {where}{unknown[0]} (allowed: {allowed})")
    values: dict[str, Any] = {}
    for name, value in data.items():
        hint = hints[name]
        key_path = f"{path}.{name}" if path else name
        if dataclasses.is_dataclass(hint):
            values[name] = _build(hint, value, key_path)
            continue
        if not _type_ok(value, hint):
            raise ConfigError(f"{key_path}: expected {_type_name(hint)}, got {json.dumps(value)}")
        values[name] = tuple(value) if typing.get_origin(hint) is tuple else value
    return cls(**values)


def _check_predict_system(options: dict[str, Any]) -> None:
    hints = typing.get_type_hints(EngineOptions)
    allowed = {f.name for f in dataclasses.fields(EngineOptions)} - {"engine"}
    for name, value in options.items():
        key_path = f"ocr.predict_system.{name}"
        if name not in allowed:
            raise ConfigError(f"unknown key {key_path} (allowed: {', '.join(sorted(allowed))})")
        if not _type_ok(value, hints[name]):
            raise ConfigError(f"{key_path}: expected {_type_name(hints[name])}, got {json.dumps(value)}")


def _check_ranges(settings: Settings) -> None:
    web, proc, svc, docs = settings.web_server, settings.ocr.process, settings.service, settings.documents
    checks = [
        (0 <= web.port <= 65535, "web_server.port must be 0..65535"),
        (web.max_body_bytes > 0, "web_server.max_body_bytes must be > 0"),
        (web.max_buffered_bytes >= web.max_body_bytes, "web_server.max_buffered_bytes must be >= max_body_bytes"),
        (len(web.allowed_roots) > 0, "web_server.allowed_roots must name at least one folder"),
        (web.idle_timeout > 0, "web_server.idle_timeout must be > 0"),
        (web.body_timeout > 0, "web_server.body_timeout must be > 0"),
        (bool(web.host), "web_server.host must name an address (an empty one listens on every interface)"),
        (web.shutdown_grace >= 0, "web_server.shutdown_grace must be >= 0"),
        (1 <= proc.number <= MAX_PROCESSES, f"ocr.process.number must be 1..{MAX_PROCESSES}"),
        (proc.max_task_number >= 1, "ocr.process.max_task_number must be >= 1"),
        (proc.queue_size >= 1, "ocr.process.queue_size must be >= 1"),
        (proc.task_timeout > 0, "ocr.process.task_timeout must be > 0"),
        (proc.start_timeout > 0, "ocr.process.start_timeout must be > 0"),
        (svc.time >= 0, "service.time must be >= 0"),
        (svc.img_number >= 0, "service.img_number must be >= 0"),
        (svc.task_number >= 1, "service.task_number must be >= 1"),
        (svc.img_bytes >= 0, "service.img_bytes must be >= 0"),
        (svc.task_bytes >= 1, "service.task_bytes must be >= 1"),
        (svc.failure_ttl >= 0, "service.failure_ttl must be >= 0"),
        (docs.max_pdf_pages >= 1, "documents.max_pdf_pages must be >= 1"),
        (10 <= docs.dpi <= 1200, "documents.dpi must be 10..1200"),
        (docs.max_page_side >= 64, "documents.max_page_side must be >= 64"),
        (docs.max_page_pixels >= 64 * 64, "documents.max_page_pixels must be >= 4096"),
        (docs.preview_cache_bytes >= 0, "documents.preview_cache_bytes must be >= 0"),
        (settings.ocr.engine in ENGINES, f"ocr.engine must be one of {', '.join(ENGINES)}"),
        (svc.backend in BACKENDS, f"service.backend must be one of {', '.join(BACKENDS)}"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
    _check_predict_ranges(settings.ocr.predict_system)
    if svc.backend == "redis":
        _check_redis_url(svc.redis_url)


# Engine options whose values outside these bounds would not fail but quietly answer nothing
# (a drop_score of 7 drops every line), refuse every image, or fail only in the workers.
PREDICT_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "cpu_threads": (lambda v: 1 <= v <= 1024, "must be 1..1024"),
    "det_limit_side_len": (lambda v: v >= 32, "must be >= 32"),
    "det_min_side_len": (lambda v: v >= 0, "must be >= 0"),
    "max_image_pixels": (lambda v: v >= 64, "must be >= 64"),
    "min_image_side": (lambda v: 1 <= v <= 1024, "must be 1..1024"),
    "drop_score": (lambda v: 0 <= v <= 1, "must be 0..1"),
    "det_db_thresh": (lambda v: 0 <= v <= 1, "must be 0..1"),
    "det_db_box_thresh": (lambda v: 0 <= v <= 1, "must be 0..1"),
    # Past a few, every box grows over the whole page (1e12 hung the workers; PaddleOCR's
    # models use 1.4-2.0).
    "det_db_unclip_ratio": (lambda v: 0 < v <= 10, "must be > 0 and <= 10"),
    "release_memory_mb": (lambda v: v < 1_000_000, "must be < 1000000 (negative: never)"),
}


def _check_predict_ranges(predict: dict[str, Any]) -> None:
    for name, (ok, rule) in PREDICT_RULES.items():
        value = predict.get(name)
        if value is not None and not ok(value):  # None: the engine's own default
            raise ConfigError(f"ocr.predict_system.{name} {rule}, got {json.dumps(value)}")
    min_side = predict.get("min_image_side", EngineOptions.min_image_side)
    max_pixels = predict.get("max_image_pixels", EngineOptions.max_image_pixels)
    if min_side * min_side > max_pixels:
        raise ConfigError(
            f"ocr.predict_system.min_image_side ({min_side}) squared is more than max_image_pixels"
            f" ({max_pixels}): every image would be refused"
        )


def _check_redis_url(url: str) -> None:
    """Parse it as the Redis client will: a bad one stopped the server with a traceback."""
    from redis.asyncio.connection import parse_url  # only where the redis backend is chosen

    try:
        parse_url(url)
    except ValueError as exc:  # the message names the part, never the password
        raise ConfigError(f"service.redis_url: {exc}") from None
    # The client reads a database path that is not a number as no database at all (db 0):
    # two deployments meant apart would share one cache.
    parts = urllib.parse.urlsplit(url)
    path = urllib.parse.unquote(parts.path).strip("/")
    if parts.scheme in ("redis", "rediss") and path and not path.isdigit():  # unix://: a socket path
        raise ConfigError(f"service.redis_url: the database must be a number (redis://host:port/0), got /{path}")


def settings_from_dict(data: dict[str, Any], base_dir: str | Path = REPO_DIR) -> Settings:
    if not isinstance(data, dict):
        raise ConfigError(f"the configuration must be a JSON object, got {type(data).__name__}")
    data = dict(data)
    if "base_dir" in data:
        raise ConfigError("unknown key base_dir")
    data["base_dir"] = str(base_dir)
    settings = _build(Settings, data, "")
    _check_predict_system(settings.ocr.predict_system)
    _check_ranges(settings)
    return settings


def load_settings(path: str | Path | None) -> Settings:
    """Read config.json; None means the embedded defaults."""
    if path is None:
        return settings_from_dict({})
    config_path = Path(path)
    try:
        with open(config_path, "rb") as fh:
            raw = fh.read(MAX_CONFIG_BYTES + 1)
        if len(raw) > MAX_CONFIG_BYTES:
            raise ConfigError(f"{config_path} is larger than {MAX_CONFIG_BYTES} bytes: not a configuration")
        # utf-8-sig: a byte-order mark (some Windows editors write one) is not an error.
        data = json.loads(raw.decode("utf-8-sig"), object_pairs_hook=_refuse_repeated_keys)
    except OSError as exc:
        raise ConfigError(f"cannot read {config_path}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{config_path} is not UTF-8 text: {exc}") from exc
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{config_path} is not valid JSON: {exc}") from exc
    except RecursionError:
        raise ConfigError(f"{config_path} nests too deeply to be a configuration") from None
    # Relative paths are the config file's neighbours where it is found, also when it is a
    # symlink (a Kubernetes ConfigMap mounts each file as one): not where the link points.
    return settings_from_dict(data, base_dir=Path(os.path.abspath(config_path)).parent)


MAX_CONFIG_BYTES = 1024 * 1024


def _refuse_repeated_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A key written twice in one object: json.loads kept the last and dropped the first
    silently (a second "ocr" section replaced the first one whole)."""
    data: dict[str, Any] = {}
    for key, value in pairs:
        if key in data:
            raise ConfigError(f"the key {json.dumps(key)} appears twice in one object; keep one")
        data[key] = value
    return data
