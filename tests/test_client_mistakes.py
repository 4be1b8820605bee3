"""Client mistakes in a request body get a JSON 4xx from the real server, never a 500.

Each case here was once a 500 (or a wrong 400); the pure parsing is unit-tested in
tests/test_request_parsing.py, these check the answer on the wire and that the server
serves on afterwards.
"""

from __future__ import annotations

import http.client
import json
import socket

import requests

from tests.conftest import RunningServer, random_word, text_image
from tests.pdf_builder import password_pdf

JSON = {"Content-Type": "application/json"}


def error_of(response: requests.Response) -> dict:
    assert response.headers["Content-Type"].startswith("application/json"), response.text[:200]
    return response.json()["error"]


def assert_still_serving(server: RunningServer) -> None:
    word = random_word()
    response = server.ocr_upload(text_image(word), timeout=60)
    assert response.status_code == 200, response.text
    assert word in " ".join(line["text"] for line in response.json()["text_lines"])


def test_a_json_integer_too_long_to_convert_is_a_400(ocr_server: RunningServer) -> None:
    # Python refuses to convert integers over 4,300 digits: even in a field the server ignores.
    body = b'{"file_type":"filename","filename":"x","anything":' + b"1" * 5000 + b"}"
    response = requests.post(f"{ocr_server.url}/ocr_service", data=body, headers=JSON, timeout=10)
    assert response.status_code == 400, response.text
    assert error_of(response)["code"] == "malformed_body"
    assert_still_serving(ocr_server)


def test_a_deeply_nested_det_is_a_400_at_every_depth(ocr_server: RunningServer) -> None:
    # Serialising the value for the error message once overflowed the stack in a narrow band of
    # depths just under the JSON parser's own limit (which is a 400 malformed_body).
    with requests.Session() as session:
        for depth in range(850, 1010):
            body = b'{"filename":"a.png","det":' + b"[" * depth + b"]" * depth + b"}"
            response = session.post(f"{ocr_server.url}/ocr_service", data=body, headers=JSON, timeout=10)
            assert response.status_code == 400, (depth, response.text[:300])
            assert error_of(response)["code"] in ("invalid_field", "malformed_body"), depth
    assert_still_serving(ocr_server)


def test_a_password_with_a_lone_surrogate_is_a_400_that_does_not_repeat_it(ocr_server: RunningServer) -> None:
    assert ocr_server.images_dir is not None
    path = ocr_server.images_dir / f"protected-{random_word()}.pdf"
    path.write_bytes(password_pdf([["SURROGATE PASSWORD"]], "secret"))
    url = f"{ocr_server.url}/ocr_service"
    # Only JSON can carry a lone surrogate as text ("\ud800"); it cannot be encoded for PDFium.
    body = b'{"file_type":"filename","filename":"%s","password":"x\\ud800"}' % str(path).encode()
    response = requests.post(url, data=body, headers=JSON, timeout=30)
    assert response.status_code == 400, response.text
    error = error_of(response)
    assert error["code"] == "invalid_field" and "password" in error["message"]
    assert "x\ud800" not in error["message"] and "\\ud800" not in response.text
    # The right password still opens it.
    opened = requests.post(url, json={"filename": str(path), "password": "secret"}, timeout=60)
    assert opened.status_code == 200, opened.text
    assert "SURROGATE PASSWORD" in opened.text
    assert_still_serving(ocr_server)


def test_the_form_media_type_is_case_insensitive(ocr_server: RunningServer) -> None:
    assert ocr_server.images_dir is not None
    word = random_word()
    path = ocr_server.images_dir / f"form-{word}.png"
    path.write_bytes(text_image(word))
    url = f"{ocr_server.url}/ocr_service"
    for content_type in ("Application/x-www-form-urlencoded", "APPLICATION/X-WWW-FORM-URLENCODED; charset=UTF-8"):
        response = requests.post(
            url,
            data=f"file_type=filename&filename={path}".encode(),
            headers={"Content-Type": content_type},
            timeout=60,
        )
        assert response.status_code == 200, (content_type, response.text)
        assert word in " ".join(line["text"] for line in response.json()["text_lines"])


def test_multipart_empty_filenames_and_capitalised_form_data(ocr_server: RunningServer) -> None:
    word = random_word()
    png = text_image(word)

    def multipart(upload_disposition: bytes, data: bytes) -> requests.Response:
        body = (
            b'--B\r\nContent-Disposition: Form-Data; name="file_type"\r\n\r\nfile\r\n'
            b"--B\r\nContent-Disposition: " + upload_disposition + b"\r\n"
            b"Content-Type: application/octet-stream\r\n\r\n" + data + b"\r\n--B--\r\n"
        )
        headers = {"Content-Type": "multipart/form-data; boundary=B"}
        return requests.post(f"{ocr_server.url}/ocr_service", data=body, headers=headers, timeout=60)

    unnamed = multipart(b'form-data; name="file"; filename=""', png)
    assert unnamed.status_code == 200, unnamed.text
    assert word in " ".join(line["text"] for line in unnamed.json()["text_lines"])
    capitalised = multipart(b'FORM-DATA; name="file"; filename="a.png"', png)
    assert capitalised.status_code == 200, capitalised.text
    # A browser's empty file input: an unnamed part without bytes.
    empty = multipart(b'form-data; name="file"; filename=""', b"")
    assert empty.status_code == 400 and error_of(empty)["code"] == "empty_file", empty.text


def test_an_image_part_without_a_filename_is_read(ocr_server: RunningServer) -> None:
    # `curl -F 'file=<img.png'` (or a client writing the bytes as a form field) sends no
    # filename parameter: the image was taken for a text field, 400 "field file is not UTF-8 text".
    word = random_word()
    body = b'--B\r\nContent-Disposition: form-data; name="file"\r\n\r\n' + text_image(word) + b"\r\n--B--\r\n"
    headers = {"Content-Type": "multipart/form-data; boundary=B"}
    response = requests.post(f"{ocr_server.url}/ocr_service", data=body, headers=headers, timeout=60)
    assert response.status_code == 200, response.text
    assert word in " ".join(line["text"] for line in response.json()["text_lines"])


def test_a_symlink_chain_too_long_to_follow_is_a_403_not_a_500(ocr_server: RunningServer) -> None:
    # Anyone who may write into an allowed root can make one; os.path.realpath recursed once
    # per link and raised RecursionError past ~1000 of them (the kernel gives up after 40).
    assert ocr_server.images_dir is not None
    word = random_word()
    folder = ocr_server.images_dir / f"chain-{word}"
    folder.mkdir()
    (folder / "end.png").write_bytes(text_image(word))
    links = 1200
    for index in range(links):
        (folder / f"link{index}").symlink_to(f"link{index + 1}" if index + 1 < links else "end.png")
    url = f"{ocr_server.url}/ocr_service"
    response = requests.post(url, json={"file_type": "filename", "filename": str(folder / "link0")}, timeout=30)
    assert response.status_code == 403, response.text
    assert error_of(response)["code"] == "forbidden_path"
    # A short chain inside the root is still followed to its file.
    short = requests.post(url, json={"filename": str(folder / f"link{links - 3}")}, timeout=60)
    assert short.status_code == 200, short.text
    assert word in " ".join(line["text"] for line in short.json()["text_lines"])


def test_api_answers_are_not_sniffed_or_stored_by_browsers(ocr_server: RunningServer) -> None:
    # OCR'd text is whatever the image says: an answer must never be taken for HTML.
    answers = [
        ocr_server.ocr_upload(text_image(random_word())),
        requests.post(f"{ocr_server.url}/ocr_service", data={"file_type": "file"}, timeout=30),  # an error
        requests.get(f"{ocr_server.url}/health", timeout=30),
    ]
    for answer in answers:
        assert answer.headers["Content-Type"].startswith("application/json"), answer.headers
        assert answer.headers["X-Content-Type-Options"] == "nosniff", answer.headers
        assert answer.headers["Cache-Control"] == "no-store", answer.headers


def test_a_task_id_or_preview_token_of_another_shape_gets_its_own_404_code(ocr_server: RunningServer) -> None:
    # The router matched only hex ids: "nope" or an upper-case id got 404 not_found ("no such
    # endpoint"), which reads as a wrong URL rather than an unknown or expired task.
    for path, code in (
        ("tasks/nope", "task_not_found"),
        ("tasks/ABCDEF", "task_not_found"),
        ("tasks/" + "a" * 65, "task_not_found"),
        ("previews/not-a-token", "preview_not_found"),
        # Bytes that are not UTF-8 (%ff) got Tornado's bare 400 http_error.
        ("tasks/%ff", "task_not_found"),
        ("previews/%ff%fe", "preview_not_found"),
    ):
        response = requests.get(f"{ocr_server.url}/ocr_service/{path}", timeout=10)
        assert response.status_code == 404, (path, response.text)
        assert error_of(response)["code"] == code, path
    assert error_of(requests.get(f"{ocr_server.url}/ocr_service/tasks/a/b", timeout=10))["code"] == "not_found"
    bad_wait = requests.get(f"{ocr_server.url}/ocr_service/tasks/{'a' * 32}?wait=%ff", timeout=10)
    assert bad_wait.status_code == 400 and error_of(bad_wait)["code"] == "invalid_field", bad_wait.text


def _raw_post(url: str, head: bytes, body: bytes) -> tuple[int, bytes]:
    """A POST /ocr_service with exactly these header lines; (status, body) of the answer."""
    host, port = url.rsplit("/", 1)[-1].rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=60) as sock:
        sock.sendall(b"POST /ocr_service HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + head + b"\r\n" + body)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    status_line, _, rest = answer.partition(b"\r\n")
    return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2]


def test_a_content_length_repeated_with_one_value_is_that_value(ocr_server: RunningServer) -> None:
    # Some proxies repeat the header; Tornado reads equal values as one, and the handler
    # answered 400 "invalid Content-Length" for the "N,N" it saw.
    word = random_word()
    body = (
        b'--b\r\nContent-Disposition: form-data; name="file"; filename="q.png"\r\n\r\n'
        + text_image(word)
        + b"\r\n--b--\r\n"
    )
    length = f"Content-Length: {len(body)}\r\n".encode()
    head = b"Content-Type: multipart/form-data; boundary=b\r\n" + length + length
    status, answer = _raw_post(ocr_server.url, head, body)
    assert status == 200, answer
    assert word in " ".join(line["text"] for line in json.loads(answer)["text_lines"]).replace(" ", "")
    different = b"Content-Type: multipart/form-data; boundary=b\r\n" + length + f"Content-Length: {len(body) + 1}\r\n".encode()
    assert _raw_post(ocr_server.url, different, body)[0] == 400


def multipart_image(word: str) -> tuple[bytes, dict[str, str]]:
    boundary = "b" + random_word()
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="w.png"\r\n\r\n'.encode()
        + text_image(word)
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def test_a_refusal_before_the_body_keeps_the_connection_or_says_it_closes(ocr_server: RunningServer) -> None:
    # The next request on a connection refused this way was reset (http.client: 10 of 10):
    # the server closed it after an answer that did not say so.
    host, port = ocr_server.url.removeprefix("http://").split(":")
    refusals = [
        ("GET", "/favicon.ico", None, 404),  # no body: answered, the connection kept
        ("POST", "/health", None, 405),
        ("PUT", "/ocr_service/tasks/" + random_word(), None, 405),
        ("GET", "/ocr_service", None, 405),
        ("FOOBAR", "/health", None, 405),  # (a method Tornado does not know was refused before prepare)
        ("POST", "/health", b"0123456789", 405),  # a body it will not read: Connection: close
        ("POST", "/no/such/path", b'{"a": 1}', 404),
        ("POST", "/ocr_service", b"x" * 10, 400),  # (a Content-Length that is not a number)
    ]
    for method, path, body, status in refusals:
        connection = http.client.HTTPConnection(host, int(port), timeout=30)
        try:
            headers = {"Content-Length": "ten"} if status == 400 else {}
            connection.request(method, path, body=body, headers=headers)
            response = connection.getresponse()
            answer = json.loads(response.read())
            assert (response.status, "error" in answer) == (status, True), (method, path, answer)
            closes = response.getheader("Connection") == "close"
            assert closes == (body is not None), (method, path, response.getheaders())
            first_socket = connection.sock  # None once http.client has closed it, as told
            word = random_word()
            image, image_headers = multipart_image(word)
            connection.request("POST", "/ocr_service", body=image, headers=image_headers)  # reopened if it closed
            following = connection.getresponse()
            assert following.status == 200, (method, path, following.read()[:300])
            assert word in " ".join(line["text"] for line in json.loads(following.read())["text_lines"])
            if not closes:
                assert first_socket is not None and connection.sock is first_socket  # one connection carried both
        finally:
            connection.close()
