"""Results, task records and in-flight claims shared by several server nodes through Redis.

Every call degrades instead of failing: when Redis is unreachable the node keeps serving
from its local cache, reports `connected: false`, and tries Redis again after a short
back-off (a circuit breaker, so a dead Redis costs no latency per request).

Keys (all under `prefix`):
  result:<cache key>   JSON result, EX = cache TTL
  lru                  ZSET cache key -> last use time (by Redis's clock); bounds the result count (true LRU)
  task:<task id>       JSON task view, EX = task TTL; while the task is unfinished its node
                       rewrites it every few seconds (a heartbeat: `node`, `heartbeat_at`)
  claim:<cache key>    token of the node computing this key, PX = a short lease (CLAIM_LEASE_S)
                       that the node renews while its run lasts
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from ocr_pool import PoolError

log = logging.getLogger("ocr_cache.redis")

# Delete a claim only if it is still ours (it may have expired and been re-taken).
RELEASE_SCRIPT = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""
# Store a result and bound the result count (true LRU) in one atomic step: two nodes trimming
# at once can neither evict more than the excess nor leave a ZSET member without its result.
# Uses are stamped with Redis's clock, as reads stamp them (GET_RESULT_SCRIPT): each node's own
# clock ordered them before, and a node whose clock ran behind had its results evicted first.
PUT_RESULT_SCRIPT = """
local now = redis.call('time')
redis.call('set', KEYS[1], ARGV[1], 'EX', ARGV[2])
redis.call('zadd', KEYS[2], tonumber(now[1]) + tonumber(now[2]) / 1000000, ARGV[3])
local excess = redis.call('zcard', KEYS[2]) - tonumber(ARGV[4])
if excess > 0 then
  local evicted = redis.call('zpopmin', KEYS[2], excess)
  for i = 1, #evicted, 2 do redis.call('del', ARGV[5] .. evicted[i]) end
end
return 0
"""
# A result's read and its use time (XX: only for a key the LRU still holds), in one round trip.
# A result that expired leaves the LRU on its first miss: stamped as just used, it counted
# against max_results and pushed out live results before itself.
GET_RESULT_SCRIPT = """
local value = redis.call('get', KEYS[1])
if not value then
  redis.call('zrem', KEYS[2], ARGV[1])
  return value
end
local now = redis.call('time')
redis.call('zadd', KEYS[2], 'XX', tonumber(now[1]) + tonumber(now[2]) / 1000000, ARGV[1])
return value
"""
# Push a claim's expiry one lease further, only if it is still ours.
EXTEND_SCRIPT = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end
return 0
"""
# Write an unfinished task's view (its first write and every heartbeat) unless its outcome is
# there already: the two race, and a fast run's outcome can land first. Stamped with Redis's
# clock, so that every node judges the heartbeat's age by the same clock. Answers {written,
# whether a cancel of the task was asked for (KEYS[2])}: a heartbeat learns both in one trip.
PUT_UNFINISHED_TASK_SCRIPT = """
local cancel = redis.call('exists', KEYS[2])
local current = redis.call('get', KEYS[1])
if current then
  local ok, old = pcall(cjson.decode, current)
  if ok and (old['status'] == 'done' or old['status'] == 'failed') then return {0, cancel} end
end
local view = cjson.decode(ARGV[1])
local now = redis.call('time')
view['heartbeat_at'] = tonumber(now[1]) + tonumber(now[2]) / 1000000
redis.call('set', KEYS[1], cjson.encode(view), 'EX', ARGV[2])
return {1, cancel}
"""
RETRY_AFTER_FAILURE_S = 2.0
# Its value changes only when Redis loses its data (see RedisStore._check_epoch).
EPOCH_KEY = "epoch"
# How long a claim outlives its node's last renewal (renewed every third of it while the run
# lasts): a node that died mid-run holds up the others this long, not claim_ttl (minutes).
CLAIM_LEASE_S = 6.0
T = TypeVar("T")
# What a guarded read answers when Redis could not be asked (None means "not there").
_UNREACHABLE: Any = object()


class SharedStoreUnavailableError(PoolError):
    """Redis could not be asked: what it holds is unknown (not the same as absent)."""

    code = "store_unavailable"


def _encoded(value: dict[str, Any]) -> bytes:
    """A result or task view as Redis keeps it: JSON by orjson (a page's text layer arrives
    already encoded, see models.text_layers.EncodedLayer; ~8x faster than json on the loop)."""
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS)


# Values at least this large are decoded with the cyclic garbage collector paused.
LARGE_VALUE_BYTES = 1 << 20


def _decoded(raw: bytes) -> Any:
    """A value read from Redis. JSON makes no reference cycles, and the collections that the
    millions of objects of a large one set off took most of its decoding time (a document
    result at the text-layer bound, 25 MB: 1.5 s of event loop, 0.28 s with them paused)."""
    if len(raw) < LARGE_VALUE_BYTES or not gc.isenabled():
        return orjson.loads(raw)
    gc.disable()
    try:
        return orjson.loads(raw)
    finally:
        gc.enable()


def redact(url: str) -> str:
    """The URL without its password, for /health and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username or ''}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


class RedisStore:
    def __init__(
        self,
        url: str,
        *,
        prefix: str,
        result_ttl: float,
        max_results: int,
        task_ttl: float,
        claim_ttl: float,
    ) -> None:
        self.url = url
        self.prefix = prefix
        self.result_ttl = result_ttl
        self.max_results = max_results
        self.task_ttl = task_ttl
        self.claim_ttl = claim_ttl
        self.node_id = uuid.uuid4().hex[:12]
        self._client = aioredis.Redis.from_url(
            url, socket_connect_timeout=0.5, socket_timeout=1.0, health_check_interval=10
        )
        self._release = self._client.register_script(RELEASE_SCRIPT)
        self._extend = self._client.register_script(EXTEND_SCRIPT)
        self._put_result = self._client.register_script(PUT_RESULT_SCRIPT)
        self._put_unfinished_task = self._client.register_script(PUT_UNFINISHED_TASK_SCRIPT)
        # Claim renewals and task heartbeats running now: close() stops those left at shutdown.
        self._keepers: set[asyncio.Task[None]] = set()
        self.connected = True
        self.errors = 0
        self._down_until = 0.0
        self._probing = False  # one call is testing a Redis that was down; the rest fall back
        self.last_error: str | None = None
        self._watcher: asyncio.Task[None] | None = None
        # A value this node found under EPOCH_KEY: another value, or none, means Redis lost its
        # data (a restart without persistence, FLUSHALL) and `on_data_lost` is called.
        self._epoch: bytes | None = None
        self.on_data_lost: list[Callable[[], None]] = []

    # ---- circuit breaker ----------------------------------------------------------

    def _available(self) -> bool:
        return self.connected or (not self._probing and time.monotonic() >= self._down_until)

    def _failed(self, exc: Exception) -> None:
        self.errors += 1
        self.last_error = f"{type(exc).__name__}: {exc}"
        if self.connected:
            log.warning("Redis unreachable, serving without the shared cache: %s", self.last_error)
        self.connected = False
        self._down_until = time.monotonic() + RETRY_AFTER_FAILURE_S

    def _succeeded(self) -> None:
        if not self.connected:
            log.info("Redis reachable again at %s", redact(self.url))
        self.connected = True

    async def _guarded(self, operation: Callable[[], Awaitable[T]], fallback: T) -> T:
        """Run one Redis operation; `fallback` while Redis is down or when it fails."""
        if not self._available():
            return fallback
        # Half-open: while Redis was down, this call alone probes it; concurrent calls fall back
        # instead of each waiting on a connect timeout.
        probing = not self.connected
        self._probing = self._probing or probing
        try:
            value = await operation()
        except (RedisError, OSError) as exc:
            self._failed(exc)
            return fallback
        finally:
            if probing:
                self._probing = False
        self._succeeded()
        return value

    # ---- results ------------------------------------------------------------------

    async def get_result(self, key: str) -> dict[str, Any] | None:
        if self.result_ttl <= 0 or self.max_results <= 0:
            return None

        async def read() -> bytes | None:
            # EVAL with the script's text, not EVALSHA: one round trip from the first hit on
            # (Redis keeps the compiled script), never a NOSCRIPT miss and a reload.
            keys = (self.prefix + "result:" + key, self.prefix + "lru")
            raw: bytes | None = await self._client.eval(GET_RESULT_SCRIPT, 2, *keys, key)
            return raw

        raw = await self._guarded(read, None)
        return None if raw is None else _decoded(raw)

    async def put_result(self, key: str, result: dict[str, Any]) -> None:
        if self.result_ttl <= 0 or self.max_results <= 0:
            return

        async def write() -> None:
            await self._put_result(
                keys=[self.prefix + "result:" + key, self.prefix + "lru"],
                args=[_encoded(result), max(1, int(self.result_ttl)), key, self.max_results, self.prefix + "result:"],
            )

        await self._guarded(write, None)

    # ---- in-flight claims --------------------------------------------------------------

    async def claim(self, key: str) -> str | None:
        """Try to become the node that computes `key`: a token if we are, else None.

        With Redis down every node computes for itself (the token "local"), and so it does
        with the result cache off: a node waiting on another's claim could never read its
        result, and read the image itself only after the whole of the other's run.
        """
        if self.result_ttl <= 0 or self.max_results <= 0:
            return "local"
        token = f"{self.node_id}:{uuid.uuid4().hex[:8]}"

        async def take() -> str | None:
            won = await self._client.set(self.prefix + "claim:" + key, token, nx=True, px=self._lease_ms())
            return token if won else None

        asking = asyncio.ensure_future(self._guarded(take, "local"))
        try:
            return await asyncio.shield(asking)
        except asyncio.CancelledError:
            # The caller left mid round trip: a claim won meanwhile is given back, not left to
            # hold every node sent the image for a lease.
            asking.add_done_callback(lambda done: self._give_back_won(key, done))
            raise

    def _give_back_won(self, key: str, asked: asyncio.Future[str | None]) -> None:
        if asked.cancelled() or asked.exception() is not None:
            return
        token = asked.result()
        if token is not None and token != "local":
            asyncio.ensure_future(self.release(key, token))

    async def claim_held(self, key: str) -> bool:
        async def held() -> bool:
            return bool(await self._client.exists(self.prefix + "claim:" + key))

        return await self._guarded(held, False)

    @property
    def claim_lease(self) -> float:
        """Seconds a claim lasts past its last renewal (never longer than claim_ttl)."""
        return min(CLAIM_LEASE_S, self.claim_ttl)

    def _lease_ms(self) -> int:
        return max(1, int(self.claim_lease * 1000))

    async def extend(self, key: str, token: str) -> bool:
        """Keep holding a claim for another lease; False if it is no longer ours (or Redis is down)."""
        if token == "local":
            return True

        async def push() -> bool:
            return bool(await self._extend(keys=[self.prefix + "claim:" + key], args=[token, self._lease_ms()]))

        return await self._guarded(push, False)

    def keep(self, key: str, token: str) -> asyncio.Task[None] | None:
        """Renew our claim on `key` every third of a lease until the returned task is cancelled
        (the run ended); None for a "local" claim, which Redis does not hold."""
        if token == "local":
            return None
        return self.keep_alive(lambda: self._renew_claim(key, token), self.claim_lease / 3)

    async def _renew_claim(self, key: str, token: str) -> bool:
        if await self.extend(key, token) or not self.connected:
            return True  # renewed, or Redis is down: try again, the claim may outlast the outage
        # It lapsed (a stalled loop, a long outage) and another node may read the image too: this
        # run goes on all the same, its result is still good.
        log.warning("the claim on %s is no longer ours; reading it all the same", key)
        return False

    def keep_alive(self, renew: Callable[[], Awaitable[bool]], interval: float) -> asyncio.Task[None]:
        """Call `renew` every `interval` seconds until it answers False or the returned task is
        cancelled (the work it keeps alive ended); close() cancels those still running."""
        keeper = asyncio.ensure_future(_every(interval, renew))
        self._keepers.add(keeper)
        keeper.add_done_callback(self._keepers.discard)
        return keeper

    async def release(self, key: str, token: str) -> None:
        if token == "local":
            return

        async def drop() -> None:
            await self._release(keys=[self.prefix + "claim:" + key], args=[token])

        await self._guarded(drop, None)

    # ---- tasks --------------------------------------------------------------------------

    async def put_task(self, task_id: str, view: dict[str, Any]) -> bool:
        """Write a task's view, renewing its TTL. An unfinished one (written at submission, then
        by every heartbeat) never overwrites an outcome and carries this node's id and the
        heartbeat's time; an outcome overwrites whatever is there. False when Redis could not
        be reached (nothing was written: the caller writes it again later)."""
        key, ttl = self.prefix + "task:" + task_id, max(1, int(self.task_ttl))

        async def write() -> bool:
            if view.get("status") in ("done", "failed"):
                await self._client.set(key, _encoded(view), ex=ttl)
            else:
                await self._put_unfinished(task_id, view)
            return True

        return await self._guarded(write, False)

    async def beat_task(self, task_id: str, view: dict[str, Any]) -> bool:
        """An unfinished task's heartbeat: put_task's write and, in the same round trip, whether
        a cancel of the task was asked for (request_cancel, from any node). False also when
        Redis could not be reached."""
        if view.get("status") in ("done", "failed"):  # it ended as its beat began
            await self.put_task(task_id, view)
            return False

        async def write() -> bool:
            return await self._put_unfinished(task_id, view)

        return await self._guarded(write, False)

    async def _put_unfinished(self, task_id: str, view: dict[str, Any]) -> bool:
        """Write an unfinished view (unless the outcome is there); True if a cancel was asked for."""
        _, cancel = await self._put_unfinished_task(
            keys=[self.prefix + "task:" + task_id, self.prefix + "cancel:" + task_id],
            args=[_encoded({**view, "node": self.node_id}), max(1, int(self.task_ttl))],
        )
        return bool(cancel)

    async def request_cancel(self, task_id: str) -> bool:
        """Ask the node that runs a task to cancel it (its next heartbeat, beat_task, reads
        this); False when Redis could not be reached."""

        async def write() -> bool:
            await self._client.set(self.prefix + "cancel:" + task_id, b"1", ex=max(1, int(self.task_ttl)))
            return True

        return await self._guarded(write, False)

    async def get_task(self, task_id: str) -> dict[str, Any] | None:
        """The stored view (None: no such task); an unfinished one also with `heartbeat_age`,
        the seconds since its node last wrote it (by Redis's clock, the one that stamped it).
        Raises SharedStoreUnavailableError when Redis cannot be asked: a task another node
        runs is not unknown because Redis blinked."""

        async def read() -> tuple[bytes | None, tuple[int, int]]:
            async with self._client.pipeline(transaction=False) as pipe:
                pipe.get(self.prefix + "task:" + task_id)
                pipe.time()
                raw, now = await pipe.execute()
            return raw, now

        answer = await self._guarded(read, _UNREACHABLE)
        if answer is _UNREACHABLE:
            raise SharedStoreUnavailableError(
                f"the shared store (Redis at {redact(self.url)}) cannot be reached, so this task's state is"
                " unknown for now; poll again shortly"
            )
        raw, (seconds, micros) = answer
        if raw is None:
            return None
        view: dict[str, Any] = _decoded(raw)
        if "heartbeat_at" in view:
            view["heartbeat_age"] = seconds + micros / 1e6 - view["heartbeat_at"]
        return view

    async def ping(self) -> bool:
        """Check Redis now, even while the circuit breaker holds off other calls."""
        self._down_until = 0.0
        return await self._guarded(self._client.ping, False)

    def watch(self) -> None:
        """While Redis is down, ask it every RETRY_AFTER_FAILURE_S whether it is back: the
        state (/health, ocr_shared_store_up) changed only when a request used Redis, so an
        idle node read as degraded for good after an outage."""
        if self._watcher is None:
            self._watcher = asyncio.ensure_future(self._watch())

    async def _watch(self) -> None:
        while True:
            try:
                if not self.connected and self._available():
                    await self._guarded(self._client.ping, False)
                if self.connected:
                    await self._check_epoch()
            except Exception:
                log.exception("checking Redis failed; trying again in %.0f s", RETRY_AFTER_FAILURE_S)
            await asyncio.sleep(RETRY_AFTER_FAILURE_S)

    async def _check_epoch(self) -> None:
        """Redis keeps one random value under EPOCH_KEY (the first node to look sets it):
        when it is gone or another, Redis lost what was written before, and this node's
        records (finished tasks, which nothing else writes again) must be written anew."""
        key = self.prefix + EPOCH_KEY

        async def read() -> bytes | None:
            epoch = await self._client.get(key)
            if epoch is not None:
                return epoch  # type: ignore[no-any-return]  # a read only: fine on a full Redis
            async with self._client.pipeline(transaction=False) as pipe:
                pipe.set(key, uuid.uuid4().hex, nx=True)
                pipe.get(key)
                _, epoch = await pipe.execute()
            return epoch  # type: ignore[no-any-return]

        epoch = await self._guarded(read, None)
        if epoch is None:
            return
        lost = self._epoch is not None and epoch != self._epoch
        self._epoch = epoch
        if lost:
            log.warning("Redis lost its data (restarted without persistence, or flushed): writing this node's task records again")
            for callback in self.on_data_lost:
                callback()

    async def close(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
        for keeper in list(self._keepers):
            keeper.cancel()  # shutting down: no claim renewed, no heartbeat written any more
        await self._client.aclose()

    def stats(self) -> dict[str, Any]:
        return {
            "backend": "redis",
            "url": redact(self.url),
            "connected": self.connected,
            "errors": self.errors,
            "last_error": self.last_error,
            "node_id": self.node_id,
        }


async def _every(interval: float, renew: Callable[[], Awaitable[bool]]) -> None:
    while True:
        await asyncio.sleep(interval)
        if not await renew():
            return
