"""Other runtimes and precisions of the same ONNX models: OpenVINO, and INT8 variants."""

from __future__ import annotations

import importlib.util
import io
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import requests
from PIL import Image

from bench.common import cer, normalize_lines
from models import EngineOptions, ModelLoadError, check_model_files, create_engine, model_identity
from models.options import cpu_has_bf16
from models.quantize import build, calibration_images
from models.rec import TextRecognizer
from tests.conftest import (
    ENGINE_THREADS,
    GT_DIR,
    LOAD_DIR,
    REPO,
    RunningServer,
    base_config,
    gt_manifest,
    random_word,
    text_image,
)

RECEIPT = "sroie_290.jpg"
# The fp32 onnxruntime reading of this receipt has a CER of about 2 %; the bounds leave
# room for another runtime's float differences (OpenVINO) and for INT8's coarser weights.
MAX_CER_FP32 = 0.08
MAX_CER_INT8 = 0.12
CALIBRATION_IMAGES = ("paddleocr_doc_imgs__imgs_en_img_12.jpg", "easyocr_examples__examples_example.png")


def needs_openvino() -> None:
    if importlib.util.find_spec("openvino") is None:
        pytest.skip("openvino is not installed (pip install -r requirements.txt)")


def needs_bf16() -> None:
    needs_openvino()
    if not cpu_has_bf16():
        pytest.skip("this CPU has no bf16 units (avx512_bf16 / amx_bf16)")


def receipt_cer(engine: Any) -> float:
    row = next((r for r in gt_manifest() if r["image"].endswith(RECEIPT)), None)
    if row is None:
        pytest.skip(f"{RECEIPT} is not in the shared ground-truth set")
    result = engine.recognize((GT_DIR / row["image"]).read_bytes(), det="on")
    json.dumps(result)
    texts = [line["text"] for line in result["text_lines"]]
    return cer(normalize_lines(row["lines"], casefold=True), normalize_lines(texts, casefold=True))


@pytest.fixture(scope="module")
def int8_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """INT8 det/rec of the default family, built once for this module (two calibration images)."""
    if not LOAD_DIR.is_dir():
        pytest.skip(f"shared calibration images not found at {LOAD_DIR}")
    # A printed English page and a photo of signs: lines of many widths in ~3 s of fp32 reading
    # (the first two of the set, two dense book pages, took ~13 s). Calibrated on either pair
    # the INT8 receipt reads at about 2 % CER, far inside MAX_CER_INT8.
    images = [LOAD_DIR / name for name in CALIBRATION_IMAGES]
    if not all(image.is_file() for image in images):
        images = calibration_images(LOAD_DIR, 2)
    folder = tmp_path_factory.mktemp("model-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OCR_MODEL_CACHE", str(folder))
        build("PP-OCRv6-small", images)
    return folder


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_openvino_engine_reads_a_receipt(precision: str) -> None:
    needs_bf16() if precision == "bf16" else needs_openvino()
    engine = create_engine(EngineOptions(engine="openvino", precision=precision, cpu_threads=ENGINE_THREADS))
    assert engine.identity.startswith("openvino:PP-OCRv6-small:")
    # What OpenVINO was told is what it compiled: every model computes in the asked precision.
    hint = "bf16" if precision == "bf16" else "f32"
    for session in (engine.detector.session, engine.recognizer.session):
        compiled = session._request.get_compiled_model()
        assert compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name() == hint
    assert engine.recognizer.width_step == 64  # line batches padded to a few widths (below)
    assert receipt_cer(engine) <= MAX_CER_FP32


def test_precision_auto_is_bf16_on_openvino_where_the_cpu_has_it(tmp_path: Path) -> None:
    with_bf16, without = tmp_path / "bf16", tmp_path / "plain"
    with_bf16.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx512f avx512_bf16 avx512_vnni\n")
    without.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_vnni\n")
    assert cpu_has_bf16(str(with_bf16)) and not cpu_has_bf16(str(without))
    assert not cpu_has_bf16(str(tmp_path / "missing"))
    expected = "bf16" if cpu_has_bf16() else "fp32"
    assert EngineOptions(engine="openvino").precision == expected
    assert EngineOptions(engine="onnxruntime").precision == "fp32"
    assert EngineOptions(engine="paddle").precision == "fp32"
    # bf16 and fp32 readings differ slightly: the cache never mixes them.
    assert model_identity(EngineOptions(engine="openvino", precision="bf16")) != model_identity(
        EngineOptions(engine="openvino", precision="fp32")
    )


def test_bf16_where_it_cannot_run_is_refused_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ModelLoadError, match="bf16 needs ocr.engine openvino"):
        check_model_files(EngineOptions(engine="onnxruntime", precision="bf16"))
    monkeypatch.setattr("models.options.cpu_has_bf16", lambda: False)
    with pytest.raises(ModelLoadError, match=r"avx512_bf16 or amx_bf16.*precision auto or fp32"):
        check_model_files(EngineOptions(engine="openvino", precision="bf16"))
    assert EngineOptions(engine="openvino").precision == "fp32"  # auto falls back instead


class _ShapeRecorder:
    """A recogniser session that answers blanks and remembers the input shapes."""

    def __init__(self, width_step: int | None) -> None:
        if width_step is not None:
            self.width_step = width_step
        self.shapes: list[tuple[int, ...]] = []
        self.path = Path("recorder.onnx")
        self.classes = 1

    def input_height(self) -> int:
        return 48

    def run(self, x: Any) -> list[Any]:
        import numpy as np

        self.shapes.append(x.shape)
        return [np.zeros((x.shape[0], x.shape[3] // 8, self.classes), dtype=np.float32)]


def test_openvino_line_batches_are_padded_to_a_few_widths() -> None:
    import numpy as np

    crops = [np.full((30, 30 + 17 * i, 3), 255, np.uint8) for i in range(30)]
    fixed, free = _ShapeRecorder(64), _ShapeRecorder(None)
    for session in (fixed, free):
        recognizer = TextRecognizer(session, ["a"], gap_spaces=False)
        session.classes = recognizer.num_classes
        recognizer(crops)
    assert {shape[3] % 64 for shape in fixed.shapes} == {0}
    assert len({s[3] for s in fixed.shapes}) < len({s[3] for s in free.shapes}) == len(free.shapes)
    # Padding only: each batch is at least as wide as without it, and by less than a step.
    assert all(0 <= a[3] - b[3] < 64 for a, b in zip(fixed.shapes, free.shapes))


_READ_A_PAGE = """
import json, sys
from models import EngineOptions, create_engine
from models.pipeline import resident_mb
engine = create_engine(EngineOptions(engine="openvino", cpu_threads=int(sys.argv[1]), release_memory_mb=int(sys.argv[2])))
page = sys.stdin.buffer.read()
texts = [[line["text"] for line in engine.recognize(page, det="on")["text_lines"]] for _ in range(2)]
print(json.dumps({"texts": texts, "rss_mb": resident_mb()}))
"""


def test_openvino_workers_give_back_the_buffers_of_a_large_page() -> None:
    """OpenVINO keeps each model's intermediate buffers at the size of the largest input it
    has run: a worker stayed ~800 MB after its first large pages. Above release_memory_mb a
    task ends by giving them back; the answers do not change."""
    needs_openvino()
    words = [random_word() for _ in range(4)]
    canvas = Image.new("RGB", (2400, 1800), "white")
    for index, word in enumerate(words):
        canvas.paste(Image.open(io.BytesIO(text_image(word))), (150 + 500 * (index % 2), 200 + 400 * index))
    page = io.BytesIO()
    canvas.save(page, format="PNG")

    def read(release_memory_mb: int) -> dict[str, Any]:
        run = subprocess.run(
            [sys.executable, "-c", _READ_A_PAGE, str(ENGINE_THREADS), str(release_memory_mb)],
            input=page.getvalue(), capture_output=True, cwd=REPO, timeout=300, check=True,
        )
        return json.loads(run.stdout.decode().strip().splitlines()[-1])

    kept, given_back = read(-1), read(0)
    assert kept["texts"] == given_back["texts"]
    assert all(word in " ".join(kept["texts"][0]).replace(" ", "") for word in words)
    # A 2400 x 1800 page is detected at 1280 x 960: ~150 MB of buffers on this model.
    assert kept["rss_mb"] - given_back["rss_mb"] > 100, (kept["rss_mb"], given_back["rss_mb"])


@pytest.fixture
def openvino_server(one_worker_server: RunningServer) -> RunningServer:
    """One worker on OpenVINO, the server's default engine: the session's plain one-worker
    server (base_config(number=1)), for the tests that only read through it (no counters, no faults)."""
    needs_openvino()
    assert one_worker_server.health()["engine"] == "openvino", "the default engine is no longer OpenVINO"
    return one_worker_server


@pytest.mark.parametrize("engine", ["onnxruntime", "openvino"])
def test_server_on_each_onnx_engine_answers_uploads(
    server_factory: Any, engine: str, request: pytest.FixtureRequest
) -> None:
    if engine == "openvino":
        server = request.getfixturevalue("openvino_server")
    else:
        config = base_config(number=1)
        config["ocr"]["engine"] = engine
        server = server_factory(config, name=engine)
    health = server.health()
    assert health["engine"] == engine and health["model_identity"].startswith(f"{engine}:")
    assert health["precision"] == ("bf16" if engine == "openvino" and cpu_has_bf16() else "fp32")
    word = random_word()
    response = server.ocr_upload(text_image(word))
    assert response.status_code == 200, response.text
    assert word in "".join(line["text"] for line in response.json()["text_lines"]).replace(" ", "")


def test_openvino_without_openvino_installed_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "openvino" else real_find_spec(name, *a)
    )
    with pytest.raises(ModelLoadError, match=r"'openvino'.*pip install -r requirements\.txt"):
        check_model_files(EngineOptions(engine="openvino"))


def test_int8_before_it_is_built_names_the_build_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OCR_MODEL_CACHE", str(tmp_path))
    with pytest.raises(ModelLoadError, match=r"python -m models\.quantize --model PP-OCRv6-small"):
        check_model_files(EngineOptions(precision="int8"))


def test_int8_files_of_an_earlier_recipe_are_not_used(int8_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A cache holding only files built the way an earlier release built them (same fp32
    # source, no recipe in the name) must send the user to rebuild, not load them.
    old = tmp_path / "int8"
    old.mkdir()
    for built in (int8_cache / "int8").glob("*.onnx"):
        (old / re.sub(r"-r\d+\.onnx$", ".onnx", built.name)).write_bytes(built.read_bytes())
    monkeypatch.setenv("OCR_MODEL_CACHE", str(tmp_path))
    with pytest.raises(ModelLoadError, match=r"python -m models\.quantize"):
        check_model_files(EngineOptions(precision="int8"))


def test_int8_recogniser_keeps_its_attention_and_classifier_in_fp32(int8_cache: Path) -> None:
    import onnx

    rec = next((int8_cache / "int8").glob("rec-*.onnx"))
    graph = onnx.load(str(rec)).graph
    weights = {init.name for init in graph.initializer}
    matmuls = [node for node in graph.node if node.op_type == "MatMul" and node.input[1] in weights]
    convs = [node for node in graph.node if node.op_type == "Conv"]
    # Weights read straight from the file are fp32; INT8 ones come through a DequantizeLinear.
    assert len(matmuls) >= 2, [n.name for n in graph.node if n.op_type == "MatMul"]
    # ... while every convolution's weights are INT8.
    assert convs and not [n.name for n in convs if n.input[1] in weights]


def test_int8_needs_an_onnx_engine() -> None:
    with pytest.raises(ModelLoadError, match="int8"):
        check_model_files(EngineOptions(engine="paddle", precision="int8"))


@pytest.mark.parametrize("engine", ["onnxruntime", "openvino"])
def test_int8_variant_reads_a_receipt(int8_cache: Path, engine: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if engine == "openvino":
        needs_openvino()
    monkeypatch.setenv("OCR_MODEL_CACHE", str(int8_cache))
    options = EngineOptions(engine=engine, precision="int8", cpu_threads=ENGINE_THREADS)
    fp32 = EngineOptions(engine=engine, cpu_threads=ENGINE_THREADS)
    assert model_identity(options) != model_identity(fp32)  # the cache never mixes the two
    assert receipt_cer(create_engine(options)) <= MAX_CER_INT8


def test_server_with_int8_answers_uploads(
    int8_cache: Path, server_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OCR_MODEL_CACHE", str(int8_cache))  # inherited by the server it starts
    config = base_config(number=1)
    config["ocr"]["predict_system"] = {"precision": "int8"}
    server = server_factory(config, name="int8")
    word = random_word()
    response = requests.post(
        f"{server.url}/ocr_service",
        data={"file_type": "file"},
        files={"file": ("w.png", text_image(word))},
        timeout=120,
    )
    assert response.status_code == 200, response.text
    assert word in "".join(line["text"] for line in response.json()["text_lines"]).replace(" ", "")


def test_server_with_the_fast_recogniser_first_reads_a_receipt(
    server_factory: Any, openvino_server: RunningServer
) -> None:
    row = next((r for r in gt_manifest() if r["image"].endswith(RECEIPT)), None)
    if row is None:
        pytest.skip(f"{RECEIPT} is not in the shared ground-truth set")
    plain = openvino_server  # base_config(number=1): the default engine, OpenVINO
    config = base_config(number=1)
    config["ocr"]["predict_system"] = {"fast_rec_model": "PP-OCRv6-tiny"}
    cascade = server_factory(config, name="fast-rec")
    # Another reading rule: another identity, so the caches (and a shared Redis) never mix them.
    assert cascade.health()["model_identity"] != plain.health()["model_identity"]
    answers = [server.ocr_upload((GT_DIR / row["image"]).read_bytes()) for server in (plain, cascade)]
    assert [a.status_code for a in answers] == [200, 200], [a.text for a in answers]
    reference = normalize_lines(row["lines"], casefold=True)
    errors = [
        cer(reference, normalize_lines([line["text"] for line in a.json()["text_lines"]], casefold=True))
        for a in answers
    ]
    # Within two points of CER of the model's own recogniser alone on the same receipt (measured: 2.2 vs 2.4 %).
    assert errors[1] <= errors[0] + 0.02, errors
