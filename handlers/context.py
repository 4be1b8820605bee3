"""What the handlers share: settings, the cached OCR service and the pool."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from cache import OcrService
from cache.documents import DocumentService
from handlers.answers import EncodedAnswers
from handlers.loop_lag import LoopLagMonitor
from handlers.upload_budget import UploadBudget
from handlers.upload_hashes import RecentHashes
from ocr_pool import WorkerPool
from settings import Settings


@dataclass
class AppContext:
    settings: Settings
    ocr: OcrService
    pool: WorkerPool
    engine_identity: str
    allowed_roots: list[Path]
    upload_budget: UploadBudget
    # CPUs the process may use (affinity, cgroup quota): the workers' threads are shared out of these.
    usable_cpus: int = 1
    # The precision the workers compute in (ocr.predict_system.precision, "auto" resolved).
    precision: str = "fp32"
    # PDFs and multi-page TIFFs (built beside `ocr` in server.build_context).
    documents: DocumentService | None = None
    started: float = field(default_factory=time.monotonic)
    loop_lag: LoopLagMonitor = field(default_factory=LoopLagMonitor)
    # Cached results' answers kept encoded for the next hit (handlers/answers.py).
    answers: EncodedAnswers = field(default_factory=EncodedAnswers)
    # The sha256 of recent small uploads, reused when the same bytes come again.
    upload_hashes: RecentHashes = field(default_factory=RecentHashes)

    def __post_init__(self) -> None:
        # An encoded answer holds its result: it goes when the result cache lets the result go.
        self.ocr.results.drop_listeners.append(self.answers.discard)
