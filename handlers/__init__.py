"""HTTP handlers: request parsing, error mapping and the routes table."""

from __future__ import annotations

from typing import Any

from handlers.context import AppContext
from handlers.health import HealthHandler, LivezHandler, ReadyzHandler
from handlers.metrics import MetricsHandler, ServiceMetrics
from handlers.ocr import OcrHandler, TaskHandler
from handlers.openapi import OpenApiHandler
from handlers.previews import PreviewHandler
from handlers.webui import STATIC_DIR, IndexHandler, StaticHandler


def routes(ctx: AppContext, metrics: ServiceMetrics) -> list[tuple[str, type, dict[str, Any]]]:
    shared = {"ctx": ctx}
    static = {"path": str(STATIC_DIR)}
    return [
        # First: Tornado tries the patterns in order, and this is the busiest route (cache hits).
        (r"/ocr_service", OcrHandler, shared),
        (r"/", IndexHandler, static),
        (r"/static/(.*)", StaticHandler, static),
        (r"/openapi.json", OpenApiHandler, {}),
        (r"/metrics", MetricsHandler, {"metrics": metrics}),
        # Any id reaches its handler, which answers an unknown one with its own 404 code
        # (task_not_found, preview_not_found), not the router's "no such endpoint".
        (r"/ocr_service/tasks/([^/]+)", TaskHandler, shared),
        (r"/ocr_service/previews/([^/]+)", PreviewHandler, shared),
        (r"/livez", LivezHandler, {}),
        (r"/readyz", ReadyzHandler, shared),
        (r"/health", HealthHandler, shared),
    ]


__all__ = ["AppContext", "ServiceMetrics", "routes"]
