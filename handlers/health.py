"""Liveness, readiness and a JSON health summary."""

from __future__ import annotations

import time

from handlers.base import JsonHandler
from handlers.context import AppContext


class LivezHandler(JsonHandler):
    endpoint = "/livez"

    def get(self) -> None:
        self.write_json({"status": "alive"})

    head = get  # load balancers that probe with HEAD get the status without the body


class ReadyzHandler(JsonHandler):
    endpoint = "/readyz"
    ctx: AppContext

    def get(self) -> None:
        ready = self.ctx.pool.ready_count
        self.write_json({"status": "ready" if ready else "not_ready", "workers_ready": ready}, 200 if ready else 503)

    head = get


class HealthHandler(JsonHandler):
    endpoint = "/health"
    ctx: AppContext

    def get(self) -> None:
        pool = self.ctx.pool
        ready = pool.ready_count
        shared = self.ctx.ocr.shared
        healthy = ready > 0 and (shared is None or shared.connected)
        self.write_json(
            {
                "status": "ok" if healthy else "degraded",
                "uptime_s": round(time.monotonic() - self.ctx.started, 1),
                "engine": self.ctx.settings.ocr.engine,
                "model": self.ctx.settings.model_family(),
                "precision": self.ctx.precision,
                "model_identity": self.ctx.engine_identity,
                "workers": pool.stats(),
                "cpus": {"usable": self.ctx.usable_cpus, "threads_per_worker": pool.threads},
                "queue": {
                    "depth": pool.queue_depth,
                    "capacity": pool.queue_size,
                    "cancelled": pool.tasks_cancelled,
                    "expired": pool.tasks_expired,
                },
                "ocr_runs": pool.tasks_run,
                "cache": self.ctx.ocr.stats(),
                "documents": self.ctx.documents.stats() if self.ctx.documents is not None else None,
                "uploads": {
                    "buffered_bytes": self.ctx.upload_budget.used,
                    "max_buffered_bytes": self.ctx.upload_budget.limit,
                    "refused": self.ctx.upload_budget.refused,
                },
            }
        )
