"""Two server nodes sharing one real Redis, real nginx in front (all on loopback)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import io
import logging
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio
import requests
from PIL import Image

from bench.launch import free_port
from cache import redis_store, task_store
from cache.records import ErrorInfo, TaskView
from cache.redis_store import RedisStore
from cache.result_store import MemoryResultStore, RedisBackedResultStore
from cache.service import OcrService
from cache.single_flight import SingleFlight
from ocr_pool import QueueFullError, TaskCancelledError, WorkerPool
from ocr_pool.pool import Job
from tests.conftest import GT_DIR, REPO, RunningServer, base_config, gt_manifest, random_word, start_server, text_image
from tests.pdf_builder import image_pdf, text_pdf
from tests.test_cache import fake_service

REDIS = shutil.which("redis-server")
NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
pytestmark = pytest.mark.skipif(
    REDIS is None or NGINX is None, reason="needs Debian's redis-server and nginx (.ci/run installs them)"
)


class RedisServer:
    def __init__(self, workdir: Path, port: int) -> None:
        self.port = port
        self.url = f"redis://127.0.0.1:{port}/0"
        self.log = workdir / f"redis-{port}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        assert REDIS is not None
        self.process = subprocess.Popen(
            [REDIS, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--maxmemory", "256mb", "--maxmemory-policy", "volatile-lru", "--logfile", str(self.log)],
        )
        wait_until(lambda: _redis_ping(self.port), "redis did not start")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=20)


def _redis_ping(port: int) -> bool:
    import socket

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def wait_until(predicate, message: str, timeout: float = 30) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, message
        time.sleep(0.02)


def nginx_config(node_ports: list[int], listen_port: int, workdir: Path) -> str:
    """The repo's deploy/nginx.conf, pointed at this test's ports and temp folder."""
    text = (REPO / "deploy" / "nginx.conf").read_text()
    servers = "".join(f"        server 127.0.0.1:{port} max_fails=1 fail_timeout=5s;\n" for port in node_ports)
    text = re.sub(r"(?m)^\s*server 127\.0\.0\.1:\d+ .*\n", "", text)
    text = text.replace("        least_conn;\n", "        least_conn;\n" + servers)
    text = re.sub(r"listen 127\.0\.0\.1:\d+;", f"listen 127.0.0.1:{listen_port};", text)
    text = text.replace("pid /tmp/ocr-nginx.pid;", f"pid {workdir}/nginx.pid;\ndaemon off;")
    text = text.replace("worker_processes auto;", "worker_processes 1;")
    temp = "".join(
        f"    {kind}_temp_path {workdir}/{kind};\n" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return text.replace("http {\n", "http {\n" + temp, 1)


class Cluster:
    def __init__(self, redis: RedisServer, nodes: list[RunningServer], nginx: subprocess.Popen[bytes], url: str) -> None:
        self.redis = redis
        self.nodes = nodes
        self.nginx = nginx
        self.url = url

    def ocr_runs(self) -> int:
        return sum(node.health()["ocr_runs"] for node in self.nodes if node.process.poll() is None)


@contextlib.contextmanager
def running_cluster(tmp_path: Path) -> Iterator[Cluster]:
    redis = RedisServer(tmp_path, free_port())
    redis.start()
    nodes: list[RunningServer] = []
    nginx: subprocess.Popen[bytes] | None = None
    try:
        nodes.extend(_start_nodes(tmp_path, redis.url, 2))
        listen = free_port()
        conf = tmp_path / "nginx.conf"
        conf.write_text(nginx_config([int(n.url.rsplit(":", 1)[1]) for n in nodes], listen, tmp_path))
        assert NGINX is not None
        with open(tmp_path / "nginx.err", "wb") as nginx_log:
            nginx = subprocess.Popen([NGINX, "-c", str(conf), "-p", str(tmp_path)], stderr=nginx_log)
        url = f"http://127.0.0.1:{listen}"
        wait_until(lambda: _http_ok(url + "/livez"), "nginx did not start")
        yield Cluster(redis, nodes, nginx, url)
    finally:
        if nginx is not None and nginx.poll() is None:
            os.kill(nginx.pid, signal.SIGTERM)
            nginx.wait(timeout=20)
        for node in nodes:
            if node.process.poll() is None:
                node.stop()
        redis.stop()


def test_the_proxys_own_refusals_are_json(tmp_path: Path) -> None:
    # nginx answered a body over its limit, and a request no node could take, with HTML pages.
    listen, nowhere = free_port(), free_port()  # no node listens on `nowhere`
    conf = tmp_path / "nginx.conf"
    conf.write_text(nginx_config([nowhere], listen, tmp_path))
    assert NGINX is not None
    with open(tmp_path / "nginx.err", "wb") as nginx_log:
        nginx = subprocess.Popen([NGINX, "-c", str(conf), "-p", str(tmp_path)], stderr=nginx_log)
    try:
        url = f"http://127.0.0.1:{listen}"
        wait_until(lambda: _answers(url + "/livez"), "nginx did not start")
        no_node = requests.get(f"{url}/health", timeout=10)
        assert no_node.status_code == 502 and no_node.headers["Content-Type"] == "application/json"
        assert no_node.json()["error"]["code"] == "node_unreachable" and no_node.headers["Retry-After"] == "5"
        too_large = requests.post(f"{url}/ocr_service", data=b"x" * (26 * 1024 * 1024), timeout=30)
        assert too_large.status_code == 413 and too_large.headers["Content-Type"] == "application/json"
        assert too_large.json()["error"]["code"] == "body_too_large"
        followed = requests.get(f"{url}/health", timeout=10, headers={"X-Request-ID": "req-502"})
        assert followed.headers["X-Request-ID"] == "req-502"  # the request id reaches the proxy's own answers
    finally:
        os.kill(nginx.pid, signal.SIGTERM)
        nginx.wait(timeout=20)


def _answers(url: str) -> bool:
    """Whether anything answers HTTP at `url` (any status)."""
    try:
        requests.get(url, timeout=2)
    except requests.RequestException:
        return False
    return True


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    """A cluster of its own, for a test that kills part of it (a node, Redis)."""
    with running_cluster(tmp_path) as started:
        yield started


@pytest.fixture(scope="module")
def shared_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """One cluster for the tests that leave it whole: each reads images of its own (random
    words, or a document with a new first page) and counts OCR runs from its own start."""
    with running_cluster(tmp_path_factory.mktemp("cluster")) as started:
        yield started


def _start_nodes(tmp_path: Path, redis_url: str, count: int) -> list[RunningServer]:
    """`count` nodes on one Redis, loading their models at once (each waits ~2.5 s for it)."""

    def start(index: int) -> RunningServer:
        config = base_config(number=1)
        config["service"].update({"backend": "redis", "redis_url": redis_url, "redis_prefix": "ocr-test:"})
        return start_server(tmp_path / f"node{index}", config)

    with concurrent.futures.ThreadPoolExecutor(count) as starting:
        launches = [starting.submit(start, index) for index in range(count)]
    started = [launch.result() for launch in launches if launch.exception() is None]
    failed = next((launch.exception() for launch in launches if launch.exception() is not None), None)
    if failed is not None:
        for node in started:
            node.stop()  # by its PID: the test never gets it
        raise failed
    return started


def _http_ok(url: str) -> bool:
    try:
        return requests.get(url, timeout=1).status_code == 200
    except requests.RequestException:
        return False


def upload(url: str, data: bytes, **fields: str) -> requests.Response:
    return requests.post(
        f"{url}/ocr_service", data={"file_type": "file", **fields}, files={"file": ("i.png", data)}, timeout=120
    )


def test_result_from_node_1_is_a_cache_hit_on_node_2(shared_cluster: Cluster) -> None:
    cluster = shared_cluster
    node1, node2 = cluster.nodes
    data = text_image(random_word())
    node2_runs = node2.health()["ocr_runs"]
    first = upload(node1.url, data)
    second = upload(node2.url, data)
    assert first.status_code == second.status_code == 200
    assert first.json()["cached"] is False and second.json()["cached"] is True
    assert second.json()["text_lines"] == first.json()["text_lines"]
    assert node2.health()["ocr_runs"] == node2_runs  # node 2 ran no OCR for it


def test_a_pdfs_text_layer_from_node_1_is_a_cache_hit_on_node_2(shared_cluster: Cluster) -> None:
    # A text layer travels from the worker as JSON bytes and is stored in Redis as they are.
    node1, node2 = shared_cluster.nodes
    words = [random_word(), random_word()]
    pdf = text_pdf([[words[0]], [words[1], "second line"]])
    first = upload(node1.url, pdf)
    second = upload(node2.url, pdf)
    assert first.status_code == second.status_code == 200, (first.text, second.text)
    assert first.json()["cached"] is False and second.json()["cached"] is True
    pages = first.json()["pages"]
    assert [page["source"] for page in pages] == ["layer", "layer"]
    assert [[line["text"] for line in page["text_lines"]] for page in pages] == [[words[0]], [words[1], "second line"]]
    assert second.json()["pages"] == pages, second.json()["pages"]


def test_task_submitted_to_node_1_is_polled_on_node_2(shared_cluster: Cluster) -> None:
    cluster = shared_cluster
    node1, node2 = cluster.nodes
    word = random_word()
    submitted = upload(node1.url, text_image(word), block_flag="false")
    assert submitted.status_code == 202
    status_url = node2.url + submitted.json()["status_url"]
    wait_until(lambda: requests.get(status_url, timeout=5).json()["status"] == "done", "task not done via node 2")
    body = requests.get(status_url, timeout=5).json()
    assert word in " ".join(line["text"] for line in body["text_lines"])


def test_long_poll_on_node_2_follows_a_task_running_on_node_1(shared_cluster: Cluster) -> None:
    cluster = shared_cluster
    node1, node2 = cluster.nodes
    word = random_word()
    submitted = upload(node1.url, text_image(word), block_flag="false")
    assert submitted.status_code == 202
    # Node 2 has no local record: it follows the task in Redis until it is done.
    polled = requests.get(node2.url + submitted.json()["status_url"], params={"wait": 60}, timeout=90)
    assert polled.status_code == 200 and polled.json()["status"] == "done"
    assert word in " ".join(line["text"] for line in polled.json()["text_lines"])


def test_identical_requests_over_both_nodes_run_ocr_once(shared_cluster: Cluster) -> None:
    cluster = shared_cluster
    data = text_image(" ".join(random_word() for _ in range(6)))
    before = cluster.ocr_runs()
    targets = [node.url for node in cluster.nodes] * 10 + [cluster.url] * 10
    with concurrent.futures.ThreadPoolExecutor(max_workers=30) as pool:
        responses = list(pool.map(lambda url: upload(url, data), targets))
    assert [r.status_code for r in responses] == [200] * 30
    assert len({str(r.json()["text_lines"]) for r in responses}) == 1
    assert cluster.ocr_runs() - before == 1


def test_nginx_gives_each_request_an_id_that_reaches_the_node_log(shared_cluster: Cluster) -> None:
    cluster = shared_cluster
    answered = upload(cluster.url, text_image(random_word()))
    assert answered.status_code == 200
    request_id = answered.headers["X-Request-ID"]
    assert re.fullmatch(r"[0-9a-f]{32}", request_id), request_id  # nginx's $request_id
    kept = requests.get(f"{cluster.url}/livez", headers={"X-Request-ID": "caller-7"}, timeout=10)
    assert kept.headers["X-Request-ID"] == "caller-7"
    time.sleep(0.2)
    logs = "".join(node.log_text() for node in cluster.nodes)
    assert f"request_id={request_id}" in logs and "request_id=caller-7" in logs


def test_nginx_keeps_serving_when_a_node_dies(cluster: Cluster) -> None:
    import psutil

    victim = cluster.nodes[1]
    worker_pids = [w["pid"] for w in victim.health()["workers"]["workers"]]
    os.kill(victim.pid, signal.SIGKILL)
    victim.process.wait(timeout=10)
    statuses = [upload(cluster.url, text_image(random_word())).status_code for _ in range(6)]
    assert statuses == [200] * 6
    # The killed node's workers see their pipe close and exit on their own: no orphans.
    wait_until(
        lambda: not any(psutil.pid_exists(p) and psutil.Process(p).status() != "zombie" for p in worker_pids),
        "workers of the killed node are still running",
    )


def test_redis_outage_degrades_without_client_errors(cluster: Cluster) -> None:
    node1 = cluster.nodes[0]
    cluster.redis.stop()
    statuses = [upload(cluster.url, text_image(random_word())).status_code for _ in range(4)]
    assert statuses == [200] * 4
    health = node1.health()
    assert health["status"] == "degraded"
    assert health["cache"]["shared_store"]["connected"] is False
    metrics = requests.get(f"{node1.url}/metrics", timeout=5).text
    assert "ocr_shared_store_up 0.0" in metrics
    # Redis comes back: the node reconnects by itself, also with no request to make it look
    # (an idle node read as degraded until a request used Redis).
    cluster.redis.start()
    deadline = time.monotonic() + 10
    while node1.health()["status"] != "ok":
        assert time.monotonic() < deadline, "an idle node did not see Redis come back"
        time.sleep(0.2)
    assert node1.health()["cache"]["shared_store"]["connected"] is True
    assert "ocr_shared_store_up 1.0" in requests.get(f"{node1.url}/metrics", timeout=5).text
    assert upload(node1.url, text_image(random_word())).status_code == 200


# ---- the shared store against a real Redis, one node's service with the fake engine ---------


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    server = RedisServer(tmp_path, free_port())
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


def make_store(url: str, **overrides: float) -> RedisStore:
    options = {"result_ttl": 60.0, "max_results": 100, "task_ttl": 60.0, "claim_ttl": 30.0}
    options.update(overrides)
    return RedisStore(url, prefix="ocr-test:", **options)  # type: ignore[arg-type]


def run_with_pool(test: Callable[[WorkerPool], Awaitable[None]]) -> None:
    async def main() -> None:
        pool = WorkerPool(
            size=1,
            max_tasks=100,
            queue_size=10,
            task_timeout=20,
            start_timeout=30,
            engine_options={},
            factory="tests.fake_engine:create_engine",
        )
        await pool.start()
        try:
            await asyncio.wait_for(test(pool), timeout=60)
        finally:
            await pool.close(grace=1)

    asyncio.run(main())


def test_with_the_result_cache_off_no_node_waits_on_another_nodes_claim(redis_url: str) -> None:
    # A node waiting on another's claim reads the result from Redis when the run ends; with the
    # result cache off (img_number or time 0) there is none, and the image was read twice, one
    # run after the other. Each node now computes for itself at once.
    async def check() -> None:
        sharing = [make_store(redis_url), make_store(redis_url)]
        off = [make_store(redis_url, max_results=0), make_store(redis_url, result_ttl=0)]
        try:
            token = await sharing[0].claim("shared")
            assert token not in (None, "local") and await sharing[1].claim("shared") is None
            assert [await store.claim("uncached") for store in off] == ["local", "local"]
        finally:
            for store in sharing + off:
                await store.close()

    asyncio.run(check())


def test_two_local_requests_for_a_new_image_make_one_claim_and_one_run(redis_url: str) -> None:
    async def check(pool: WorkerPool) -> None:
        store = make_store(redis_url)
        service = OcrService(
            pool, engine_identity="fake", cache_capacity=10, cache_ttl=60, task_capacity=10, task_ttl=60, shared=store
        )
        claims: list[str] = []
        claim = store.claim

        async def slow_first_claim(key: str) -> str | None:
            # The first claim's answer comes back last, as it can over a pool of connections.
            claims.append(key)
            token = await claim(key)
            if len(claims) == 1:
                await asyncio.sleep(0.2)
            return token

        store.claim = slow_first_claim  # type: ignore[method-assign]
        first, second = await asyncio.gather(service.join("k", b"one image", {}), service.join("k", b"one image", {}))
        assert first is second and claims == ["k"]  # the second joined the first before any Redis call
        assert first.job is not None and first.poller is None  # computed here, not polled for
        assert (await first.future)["text_lines"][0]["text"] == "one image"
        assert pool.tasks_run == 1
        await store.close()

    run_with_pool(check)


def test_a_late_queued_task_view_does_not_overwrite_done(redis_url: str) -> None:
    async def check() -> None:
        store = make_store(redis_url)
        await store.put_task("t1", {"task_id": "t1", "status": "done", "image_hash": "h", "result": {}})
        await store.put_task("t1", {"task_id": "t1", "status": "queued", "image_hash": "h"})
        assert (await store.get_task("t1"))["status"] == "done"
        await store.close()

    asyncio.run(check())


def test_lru_trim_from_two_nodes_at_once_keeps_exactly_the_bound(redis_url: str) -> None:
    async def check() -> None:
        nodes = [make_store(redis_url, max_results=5) for _ in range(2)]
        await asyncio.gather(*(nodes[i % 2].put_result(f"key{i}", {"text_lines": [], "i": i}) for i in range(200)))
        client = redis.asyncio.Redis.from_url(redis_url)
        members = {m.decode() for m in await client.zrange("ocr-test:lru", 0, -1)}
        results = {k.decode().removeprefix("ocr-test:result:") async for k in client.scan_iter("ocr-test:result:*")}
        # Neither evicted past the bound, nor a result left behind that the LRU no longer knows.
        assert len(members) == 5 and results == members
        await client.aclose()
        for node in nodes:
            await node.close()

    asyncio.run(check())


def test_a_remote_hit_is_one_round_trip(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    async def check() -> None:
        store = make_store(redis_url)
        await store.put_result("hit", {"text_lines": [{"text": "x"}]})
        sends: list[int] = []
        original = redis.asyncio.connection.AbstractConnection.send_packed_command

        async def counted(self: Any, command: Any, check_health: bool = True) -> None:
            sends.append(1)
            await original(self, command, check_health)

        monkeypatch.setattr(redis.asyncio.connection.AbstractConnection, "send_packed_command", counted)
        assert await store.get_result("hit") == {"text_lines": [{"text": "x"}]}
        assert len(sends) == 1
        await store.close()

    asyncio.run(check())


def test_a_dead_redis_is_probed_by_one_request_at_a_time() -> None:
    async def check() -> None:
        store = make_store(f"redis://127.0.0.1:{free_port()}/0")  # nothing listens there
        assert await store.get_result("a") is None and not store.connected
        errors = store.errors
        store._down_until = 0.0  # the back-off is over: the breaker is half-open
        answers = await asyncio.gather(*(store.get_result(f"k{i}") for i in range(20)))
        assert answers == [None] * 20
        assert store.errors - errors == 1  # one probe failed; the other 19 did not try
        await store.close()

    asyncio.run(check())


def test_a_wait_for_another_nodes_run_has_one_task_id_and_ends_with_its_result(redis_url: str) -> None:
    async def check(pool: WorkerPool) -> None:
        other, here = make_store(redis_url), make_store(redis_url)
        token = await other.claim("k")  # another node computes this image
        assert token is not None
        service = OcrService(
            pool, engine_identity="fake", cache_capacity=10, cache_ttl=60, task_capacity=10, task_ttl=60, shared=here
        )
        waiting = await service.join("k", b"image", {})
        assert waiting.poller is not None and waiting.job is None
        assert waiting.task_id == waiting.task_id and waiting.state == "queued"  # one id, not a new one per read
        await other.put_result("k", {"text_lines": [{"text": "from the other node"}]})
        await other.release("k", token)
        assert (await waiting.future)["text_lines"][0]["text"] == "from the other node"
        assert pool.tasks_run == 0 and await service.lookup("k") is not None
        for store in (other, here):
            await store.close()

    run_with_pool(check)


def test_task_views_keep_their_type_through_redis(redis_url: str) -> None:
    async def check() -> None:
        store = make_store(redis_url)
        view = TaskView("t", "failed", "h", error=ErrorInfo("timeout", "too slow"))
        await store.put_task("t", view.to_json())
        assert TaskView.from_json(await store.get_task("t")) == view
        await store.close()

    asyncio.run(check())


def test_a_document_sent_to_both_nodes_is_read_once(shared_cluster: Cluster) -> None:
    cluster = shared_cluster
    names = ("sroie_320.jpg", "rapid_en.jpg", "funsd_82491256.png")
    rows = [row for row in gt_manifest() if row["image"].endswith(names)]
    images = [Image.open(GT_DIR / row["image"]) for row in rows]
    marker = Image.open(io.BytesIO(text_image(random_word())))  # a new document: nothing cached
    pdf = image_pdf([marker, *images, *(image.rotate(180) for image in images)], dpi=150)
    node1, node2 = cluster.nodes
    before = cluster.ocr_runs()
    node2_before = node2.health()
    submitted = upload(node1.url, pdf, block_flag="false")
    assert submitted.status_code == 202, submitted.text
    status_url = node1.url + submitted.json()["status_url"]
    wait_until(lambda: requests.get(status_url, timeout=5).json()["status"] != "queued", "node 1 never started")
    # Node 2 gets the same document while node 1 reads it: it waits for node 1's answer.
    second = upload(node2.url, pdf)
    assert second.status_code == 200, second.text
    first = requests.get(status_url, params={"wait": 30}, timeout=60).json()
    assert first["status"] == "done" and second.json()["pages"] == first["pages"]
    node2_after = node2.health()
    assert node2_after["ocr_runs"] == node2_before["ocr_runs"]  # node 2 ran no OCR for it
    assert cluster.ocr_runs() - before == 1 + 7  # the probe and each page, once in all
    from_other_nodes = [h["documents"]["documents_from_other_nodes"] for h in (node2_before, node2_after)]
    assert from_other_nodes[1] - from_other_nodes[0] == 1


class FakePool:
    """A pool whose every job ends after `takes` seconds with `text`, or never (None: the node
    dies while its job is queued or running)."""

    def __init__(self, takes: float | None, task_timeout: float = 1.0, text: str = "read by A") -> None:
        self.takes = takes
        self.task_timeout = task_timeout
        self.text = text
        self.jobs: list[Job] = []

    def submit(self, payload: bytes, params: dict[str, Any]) -> Job:
        loop = asyncio.get_running_loop()
        job = Job(payload, params, loop, self.task_timeout)
        if self.takes is not None:
            loop.call_later(self.takes, job.future.set_result, {"text_lines": [{"text": self.text}]})
        self.jobs.append(job)
        return job

    def cancel(self, job: Job) -> bool:
        return False


def flight_node(url: str, pool: FakePool) -> tuple[RedisStore, SingleFlight]:
    """One node's single-flight over the shared Redis, with the claim_ttl the server gives it."""
    store = make_store(url, claim_ttl=2 * pool.task_timeout + 5.0)
    return store, SingleFlight(pool, RedisBackedResultStore(100, 60.0, store), store)  # type: ignore[arg-type]


def service_node(url: str, pool: FakePool, **store_options: float) -> OcrService:
    return fake_service(pool, shared=make_store(url, **store_options))  # type: ignore[arg-type]


def test_a_node_waits_for_an_owner_that_takes_its_queue_wait_plus_its_run(redis_url: str) -> None:
    # The owner's task may wait task_timeout for a worker and then run nearly task_timeout:
    # another node sent the same image meanwhile used to give up after one task_timeout (504).
    async def scenario() -> None:
        # A: queue + run, within 2 x task_timeout; B would be quick.
        store_a, node_a = flight_node(redis_url, FakePool(1.8))
        store_b, node_b = flight_node(redis_url, FakePool(0.1))
        owned = await node_a.join("same-image", b"x", {})
        waiting = await node_b.join("same-image", b"x", {})
        assert (await waiting.future)["text_lines"][0]["text"] == "read by A"
        assert (await owned.future)["text_lines"][0]["text"] == "read by A"
        assert len(node_a.pool.jobs) == 1 and node_b.pool.jobs == []  # type: ignore[attr-defined]  # one read in all
        for store in (store_a, store_b):
            await store.close()

    asyncio.run(asyncio.wait_for(scenario(), timeout=30))


def test_a_waiting_node_takes_over_within_a_lease_when_the_owner_dies(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A's claim used to last claim_ttl (2 x task_timeout + 5 s: here over two minutes) whatever
    # became of A. Now A renews a short lease while its job lives: B takes over within one.
    monkeypatch.setattr(redis_store, "CLAIM_LEASE_S", 1.0)

    async def scenario() -> None:
        store_a, node_a = flight_node(redis_url, FakePool(None, task_timeout=60.0))
        store_b, node_b = flight_node(redis_url, FakePool(0.05, task_timeout=60.0, text="read by B"))
        owned = await node_a.join("k", b"x", {})
        waiting = await node_b.join("k", b"x", {})
        await asyncio.sleep(3.0)  # three leases: A's renewals keep B waiting
        assert not waiting.future.done() and node_b.pool.jobs == []  # type: ignore[attr-defined]
        # A dies: its renewals stop and it releases nothing.
        assert owned.keeper is not None
        owned.keeper.cancel()
        died = time.monotonic()
        result = await asyncio.wait_for(asyncio.shield(waiting.future), timeout=10.0)
        assert result["text_lines"][0]["text"] == "read by B"
        assert time.monotonic() - died < 10.0  # seconds, not claim_ttl's minutes
        for store in (store_a, store_b):
            await store.close()

    asyncio.run(asyncio.wait_for(scenario(), timeout=30))


def test_an_owner_whose_claim_was_taken_keeps_reading_and_leaves_the_new_claim(
    redis_url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(redis_store, "CLAIM_LEASE_S", 1.0)

    async def scenario() -> None:
        store, node = flight_node(redis_url, FakePool(1.5, task_timeout=60.0))
        owned = await node.join("k", b"x", {})
        client = redis.asyncio.Redis.from_url(redis_url)
        await client.set("ocr-test:claim:k", "another-node:1", px=60_000)  # it lapsed and was re-taken
        assert (await owned.future)["text_lines"][0]["text"] == "read by A"  # still read and answered
        assert await node.results.get_shared("k") is not None  # and stored for every node
        assert await client.get("ocr-test:claim:k") == b"another-node:1"  # not released by A
        await client.aclose()
        await store.close()

    with caplog.at_level(logging.WARNING, logger="ocr_cache.redis"):
        asyncio.run(asyncio.wait_for(scenario(), timeout=30))
    assert "no longer ours" in caplog.text


def test_a_request_that_leaves_while_another_node_reads_its_image_ends(redis_url: str) -> None:
    # Waiting on another node's run, the last waiter's leaving stopped the wait but never ended
    # the run it awaited: the request (and its image) stayed in memory for good.
    async def scenario() -> None:
        store, node = flight_node(redis_url, FakePool(0.05))
        client = redis.asyncio.Redis.from_url(redis_url)
        await client.set("ocr-test:claim:theirs", "another-node:1", px=60_000)
        waiting = await node.join("theirs", b"x", {})
        answer = asyncio.ensure_future(waiting.future)
        await asyncio.sleep(0.3)
        assert waiting.poller is not None and not answer.done()
        node.release(waiting)  # its client left
        with pytest.raises(TaskCancelledError):
            await asyncio.wait_for(answer, timeout=2.0)
        assert node.in_flight == 0 and node.pool.jobs == []  # type: ignore[attr-defined]
        # Nothing left behind: the next request for the image waits afresh.
        again = await node.join("theirs", b"x", {})
        assert again is not waiting and again.poller is not None
        node.release(again)
        await client.aclose()
        await store.close()

    asyncio.run(asyncio.wait_for(scenario(), timeout=30))


def test_task_number_bounds_unfinished_tasks_whose_start_takes_a_redis_round_trip(redis_url: str) -> None:
    # Room was checked before the claim's round trip and the task added after it: eight
    # concurrent submissions all fitted a bound of two.
    async def scenario() -> None:
        service = fake_service(FakePool(None, task_timeout=60.0), shared=make_store(redis_url), task_capacity=2)  # type: ignore[arg-type]
        outcomes = await asyncio.gather(
            *(service.submit_task(f"image-{n}", "h", b"x", {}) for n in range(8)), return_exceptions=True
        )
        accepted = [outcome for outcome in outcomes if not isinstance(outcome, BaseException)]
        refused = [outcome for outcome in outcomes if isinstance(outcome, QueueFullError)]
        assert len(accepted) == 2 and len(refused) == 6
        assert len(service.tasks.unfinished) == 2
        # No place stays held once the starts have ended (added or refused).
        assert service.tasks._starting == 0
        assert service.shared is not None
        await service.shared.close()

    asyncio.run(asyncio.wait_for(scenario(), timeout=30))


def test_an_expired_result_read_again_does_not_push_live_results_out(redis_url: str) -> None:
    async def scenario() -> None:
        store = make_store(redis_url, result_ttl=1.0, max_results=2)
        client = redis.asyncio.Redis.from_url(redis_url)
        await store.put_result("gone", {"text_lines": []})
        await asyncio.sleep(1.3)  # expired in Redis
        assert await store.get_result("gone") is None
        await store.put_result("live", {"text_lines": []})
        assert await store.get_result("gone") is None  # read again: still a miss
        await store.put_result("newest", {"text_lines": []})
        # Two live results within max_results=2: both kept.
        assert await store.get_result("live") is not None and await store.get_result("newest") is not None
        assert sorted(await client.zrange("ocr-test:lru", 0, -1)) == [b"live", b"newest"]
        await client.aclose()
        await store.close()

    asyncio.run(asyncio.wait_for(scenario(), timeout=30))


def test_a_task_being_recorded_in_a_slow_redis_does_not_count_twice(redis_url: str) -> None:
    # Held in starting() while its record's first write waited on Redis, a task counted twice:
    # with room for two, the second was refused while only one was unfinished.
    async def scenario() -> None:
        store = make_store(redis_url)
        service = fake_service(FakePool(None, task_timeout=60.0), shared=store, task_capacity=2)  # type: ignore[arg-type]
        written = store.put_task

        async def slow_write(task_id: str, view: dict[str, Any]) -> bool:
            await asyncio.sleep(0.3)
            return await written(task_id, view)

        store.put_task = slow_write  # type: ignore[method-assign]
        first = asyncio.ensure_future(service.submit_task("image-1", "h", b"x", {}))
        await asyncio.sleep(0.1)  # its record's write is on its way
        second = await service.submit_task("image-2", "h", b"x", {})
        assert (await first).status == "queued" and second.status == "queued"
        assert len(service.tasks.unfinished) == 2
        await store.close()

    asyncio.run(asyncio.wait_for(scenario(), timeout=30))


class SlowClaims:
    """Claims whose answer takes a round trip; every claim is won."""

    async def claim(self, key: str) -> str | None:
        await asyncio.sleep(0.2)
        return "won"

    async def claim_held(self, key: str) -> bool:
        return False

    def keep(self, key: str, token: str) -> None:
        return None

    async def release(self, key: str, token: str) -> None:
        return None


def test_a_claim_won_after_its_asker_was_cancelled_is_given_back(redis_url: str) -> None:
    # Cancelled between sending SET NX and its reply, the claim stayed in Redis for a lease:
    # every node sent that image (or document) waited on a run nobody made.
    async def scenario() -> None:
        store = make_store(redis_url)
        client = redis.asyncio.Redis.from_url(redis_url)
        sent = store._client.set

        async def slow_reply(*args: Any, **kwargs: Any) -> Any:
            done = await sent(*args, **kwargs)  # Redis has set the claim...
            await asyncio.sleep(0.3)  # ...and its reply is slow to arrive
            return done

        store._client.set = slow_reply  # type: ignore[method-assign]
        asking = asyncio.ensure_future(store.claim("k"))
        await asyncio.sleep(0.15)
        assert await client.get("ocr-test:claim:k") is not None
        asking.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asking
        await asyncio.sleep(0.5)  # the reply arrives: the won claim goes back
        assert await client.get("ocr-test:claim:k") is None
        await client.aclose()
        await store.close()

    asyncio.run(asyncio.wait_for(scenario(), timeout=30))


def test_a_request_cancelled_while_asking_for_the_claim_leaves_no_run_behind() -> None:
    async def scenario() -> None:
        pool = FakePool(0.05)
        node = SingleFlight(pool, MemoryResultStore(100, 60.0), SlowClaims())  # type: ignore[arg-type]
        starting = asyncio.ensure_future(node.join("k", b"x", {}))
        await asyncio.sleep(0.05)
        joined = await node.join("k", b"x", {})  # joins the run being started
        starting.cancel()  # e.g. at shutdown, mid round trip
        with pytest.raises(asyncio.CancelledError):
            await starting
        # The request that joined gets an answer rather than waiting for ever...
        with pytest.raises(TaskCancelledError):
            await asyncio.wait_for(joined.future, timeout=1.0)
        assert node.in_flight == 0 and pool.jobs == []
        # ...and the next request runs the image.
        fresh = await node.join("k", b"x", {})
        assert (await asyncio.wait_for(fresh.future, timeout=2.0))["text_lines"][0]["text"] == "read by A"

    asyncio.run(asyncio.wait_for(scenario(), timeout=30))


@pytest.fixture
def fast_heartbeat(monkeypatch: pytest.MonkeyPatch) -> None:
    """Heartbeats every 0.25 s, a task lost after 2 s without one: the tests take seconds."""
    monkeypatch.setattr(task_store, "HEARTBEAT_S", 0.25)
    monkeypatch.setattr(task_store, "LOST_AFTER_S", 2.0)


@pytest.mark.usefixtures("fast_heartbeat")
def test_a_task_whose_node_died_reads_as_failed_on_another_node(redis_url: str) -> None:
    # A's record used to read "queued" from other nodes until it expired (task_ttl, minutes).

    async def scenario() -> None:
        node_a = service_node(redis_url, FakePool(None, task_timeout=60.0))
        node_b = service_node(redis_url, FakePool(None, task_timeout=60.0))
        record = await node_a.submit_task("k", "h", b"x", {})
        # A dies: its heartbeat stops and no outcome is written.
        node_a.tasks._heartbeats[record.task_id].cancel()
        died = time.monotonic()
        view = await node_b.task_view(record.task_id, wait=15.0)
        assert view is not None and view.status == "failed", view
        assert view.error is not None and view.error.code == "node_lost"
        assert "send the image again" in view.error.message
        assert time.monotonic() - died < 15.0  # seconds, not task_ttl's minutes
        assert (await node_a.task_view(record.task_id)).status == "queued"  # type: ignore[union-attr]  # A's own view
        for node in (node_a, node_b):
            await node.shared.close()  # type: ignore[union-attr]

    asyncio.run(asyncio.wait_for(scenario(), timeout=40))


@pytest.mark.usefixtures("fast_heartbeat")
def test_a_live_task_keeps_reading_unfinished_past_its_ttl_and_lost_after(redis_url: str) -> None:

    async def scenario() -> None:
        node_a = service_node(redis_url, FakePool(None, task_timeout=60.0), task_ttl=2.0)
        node_b = service_node(redis_url, FakePool(None, task_timeout=60.0))
        record = await node_a.submit_task("k", "h", b"x", {})
        for _ in range(9):  # 4.5 s: many heartbeats, past LOST_AFTER_S and twice the record's TTL
            await asyncio.sleep(0.5)
            view = await node_b.task_view(record.task_id)
            assert view is not None and view.status in ("queued", "running"), view
        await asyncio.sleep(0.3)
        node_a.pool.jobs[0].future.set_result({"text_lines": [{"text": "late"}]})  # type: ignore[attr-defined]
        view = await node_b.task_view(record.task_id, wait=10.0)
        assert view is not None and view.status == "done" and view.result["text_lines"][0]["text"] == "late"  # type: ignore[index]
        await node_a.shared.close()  # type: ignore[union-attr]
        await node_b.shared.close()  # type: ignore[union-attr]

    asyncio.run(asyncio.wait_for(scenario(), timeout=40))


def test_a_running_task_is_written_again_when_redis_loses_its_data_before_its_heartbeat(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Unfinished records came back only with their next heartbeat: polls elsewhere meanwhile
    # read 404 task_not_found for a live task.
    monkeypatch.setattr(task_store, "HEARTBEAT_S", 60.0)

    async def scenario() -> None:
        runner = service_node(redis_url, FakePool(None, task_timeout=60.0))
        other = service_node(redis_url, FakePool(None, task_timeout=60.0))
        runner.shared.watch()  # type: ignore[union-attr]  # as server.py starts it
        await asyncio.sleep(0.3)
        running = await runner.submit_task("still-running", "h", b"x", {})
        assert (await other.task_view(running.task_id)) is not None
        await other.shared._client.flushall()  # type: ignore[union-attr]
        deadline = time.monotonic() + 10  # the runner notices within its watch's period (~2 s)
        while (view := await other.task_view(running.task_id)) is None:
            assert time.monotonic() < deadline, "the running task's record never came back"
            await asyncio.sleep(0.2)
        assert view.status == "queued"
        for node in (runner, other):
            await node.shared.close()  # type: ignore[union-attr]

    asyncio.run(asyncio.wait_for(scenario(), timeout=40))


def test_task_records_are_written_again_when_redis_loses_its_data(redis_url: str) -> None:
    # A finished task's record is written once; after a Redis restart without persistence (or
    # a FLUSHALL) other nodes answered 404 task_not_found for it for good.
    async def scenario() -> None:
        node_a = service_node(redis_url, FakePool(0.05))
        node_b = service_node(redis_url, FakePool(0.05))
        node_a.shared.watch()  # type: ignore[union-attr]  # as server.py starts it
        await asyncio.sleep(0.3)  # its first look at Redis
        finished = await node_a.submit_task("done-before", "h", b"x", {})
        view = await node_b.task_view(finished.task_id, wait=10.0)
        assert view is not None and view.status == "done"
        await node_b.shared._client.flushall()  # type: ignore[union-attr]
        assert await node_b.task_view(finished.task_id) is None  # gone from Redis for now
        deadline = time.monotonic() + 10
        while (view := await node_b.task_view(finished.task_id)) is None:
            assert time.monotonic() < deadline, "node A never wrote its finished record again"
            await asyncio.sleep(0.2)
        assert view.status == "done" and view.result["text_lines"][0]["text"] == "read by A"  # type: ignore[index]
        for node in (node_a, node_b):
            await node.shared.close()  # type: ignore[union-attr]

    asyncio.run(asyncio.wait_for(scenario(), timeout=40))
