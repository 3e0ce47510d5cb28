"""`convcalc serve`'s HTTP API, through Starlette's TestClient, and one real uvicorn run."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import warnings

import anyio
import httpx
import pytest
from click.testing import CliRunner

import convcalc
import convcalc.serve as serve
from convcalc.cli import cli
from convcalc.export import export_pytorch
from convcalc.loader import load_spec
from convcalc.schema import spec_schema
from convcalc.serve import LOOPBACK_NAMES, MAX_BODY_BYTES, create_app

from .conftest import ROOT, SPECS_DIR
from .test_errors import _laughs

with warnings.catch_warnings():  # starlette 1.x asks for httpx2 instead of httpx
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
    from starlette.testclient import TestClient

MNIST = SPECS_DIR / "mnist_cnn.yaml"
MNIST_TEXT = MNIST.read_text(encoding="utf-8")
TOO_SMALL = (
    "input: [1, 8, 8]\nlayers:\n  - relu\n  - {type: conv2d, out_channels: 3, kernel_size: 20}\n"
)
DROPS = (  # a stride-2 conv on 7×7 never reads the last row and column
    "input: [1, 7, 7]\nlayers:\n  - relu\n"
    "  - {type: conv2d, out_channels: 2, kernel_size: 2, stride: 2}\n"
)
HAS_DOT = shutil.which("dot") is not None


@pytest.fixture
def client():
    return TestClient(create_app())


def cli_run(*args: str):
    return CliRunner().invoke(cli, list(args))


# -- analyze -------------------------------------------------------------------------------


def test_analyze_is_shape_format_json(client):
    response = client.post("/api/analyze", json={"spec": MNIST_TEXT})
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"report", "table", "warnings", "svg", "picture_error"}
    assert body["report"] == json.loads(cli_run("shape", str(MNIST), "--format", "json").stdout)
    assert body["table"] is None  # the text table only when asked
    table = client.post("/api/analyze", json={"spec": MNIST_TEXT, "table": True}).json()
    assert table["table"] == cli_run("shape", str(MNIST)).stdout
    assert table["report"] == body["report"]
    assert body["warnings"] == []
    if HAS_DOT:
        assert body["svg"].startswith("<svg") and body["picture_error"] is None
    else:
        assert body["svg"] is None and "Graphviz" in body["picture_error"]


def test_analyze_explain_is_shape_explain(client):
    request = {"spec": MNIST_TEXT, "explain": True, "table": True}
    body = client.post("/api/analyze", json=request).json()
    assert body["table"] == cli_run("shape", str(MNIST), "--explain").stdout
    assert "⌊" in body["table"]


def test_analyze_without_a_picture(client):
    body = client.post("/api/analyze", json={"spec": MNIST_TEXT, "picture": False}).json()
    assert body["svg"] is None and body["picture_error"] is None


def test_warnings_carry_their_line(client):
    body = client.post("/api/analyze", json={"spec": DROPS, "picture": False}).json()
    (warning,) = body["warnings"]
    assert warning["path"] == "layers.1" and warning["line"] == 4
    assert warning["message"] == convcalc.analyze(DROPS).warnings[0].message


def test_errors_name_the_line_the_cli_names(client, tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(TOO_SMALL)
    result = cli_run("shape", str(path))
    assert result.exit_code == 1
    cli_line = int(re.search(r"bad\.yaml:(\d+): layers\.1", result.stderr).group(1))
    response = client.post("/api/analyze", json={"spec": TOO_SMALL})
    assert response.status_code == 422
    body = response.json()
    (error,) = body["errors"]
    assert error["line"] == cli_line == 4
    assert error["path"] == "layers.1"
    assert error["message"] in result.stderr and error["message"] in body["message"]
    assert body["message"].startswith(
        "line 4: layers.1: output size"
    )  # the editor's text has no name


def test_an_analysis_sent_again_is_answered_from_the_cache(client, monkeypatch):
    calls = []
    analyze = serve.analyze
    monkeypatch.setattr(serve, "analyze", lambda *a, **k: calls.append(1) or analyze(*a, **k))
    text = MNIST_TEXT + "# asked twice\n"  # not in the cache from other tests
    first = client.post("/api/analyze", json={"spec": text, "picture": False})
    second = client.post("/api/analyze", json={"spec": text, "picture": False})
    assert first.status_code == second.status_code == 200
    assert first.content == second.content and len(calls) == 1
    client.post("/api/analyze", json={"spec": text, "picture": False, "explain": True})
    assert len(calls) == 2  # another question, another analysis
    bad = TOO_SMALL + "# asked twice\n"
    for _ in range(2):  # errors are never kept
        assert client.post("/api/analyze", json={"spec": bad}).status_code == 422
    assert len(calls) == 4


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "the spec is empty"),
        ("input: [1, 8, 8]\nlayers: [{type: conv9d}]\n", "conv9d"),
        ("input: [1, 8\n", "YAML"),
        (_laughs(9), "expands to more than 1,000,000 values through its aliases"),
    ],
)
def test_bad_specs_are_422(client, text, message):
    response = client.post("/api/analyze", json={"spec": text})
    assert response.status_code == 422
    body = response.json()
    assert message.lower() in body["message"].lower()
    assert body["errors"] and all(set(e) == {"line", "path", "message"} for e in body["errors"])
    assert len(body["message"].encode()) < 2048


@pytest.mark.parametrize("path", [str(MNIST), "/etc/passwd", "specs/alexnet.yaml"])
def test_a_spec_naming_a_file_is_not_read(client, path):
    """load_spec reads a one-line string naming a file; from a request it is YAML only."""
    response = client.post("/api/analyze", json={"spec": path})
    assert response.status_code == 422
    assert "must be a mapping" in response.json()["message"]


# -- malformed requests ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "content, message",
    [
        (b"{not json", "not JSON"),
        (b"\xff\xfe", "not JSON"),
        (b"[" * 100_000, "not JSON"),
        (b"[1, 2]", "JSON object"),
        (b"{}", "'spec', a string"),
        (b'{"spec": 3}', "'spec', a string"),
        (b'{"spec": "input: [1]", "explain": "yes"}', "'explain' must be true or false"),
        (b'{"spec": "input: [1]", "depth": 0}', "'depth' must be a positive integer"),
    ],
)
def test_malformed_requests_are_400(client, content, message):
    response = client.post("/api/analyze", content=content)
    assert response.status_code == 400
    assert message in response.json()["message"]


def test_bodies_are_capped(client):
    big = json.dumps({"spec": "#" * MAX_BODY_BYTES}).encode()
    response = client.post("/api/analyze", content=big)
    assert response.status_code == 413
    assert "larger than 1,048,576 bytes" in response.json()["message"]

    def chunks():  # no Content-Length: the cap holds while reading
        for _ in range(MAX_BODY_BYTES // 65536 + 2):
            yield b" " * 65536

    response = client.post("/api/analyze", content=chunks())
    assert response.status_code == 413


def test_an_unexpected_failure_is_500_and_the_server_goes_on(monkeypatch):
    real = serve.analyze
    calls = []

    def failing_once(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("boom")
        return real(*args, **kwargs)

    monkeypatch.setattr(serve, "analyze", failing_once)
    client = TestClient(create_app(), raise_server_exceptions=False)
    text = MNIST_TEXT + "# fails once\n"  # not answered from the cache
    response = client.post("/api/analyze", json={"spec": text, "picture": False})
    assert response.status_code == 500
    assert response.json() == {"message": "the server failed on this request (RuntimeError)"}
    response = client.post("/api/analyze", json={"spec": text, "picture": False})
    assert response.status_code == 200


def test_unknown_addresses_and_methods_are_json(client):
    assert client.get("/api/nothing").status_code == 404
    assert client.get("/api/nothing").json() == {"message": "there is nothing at this address"}
    response = client.get("/api/analyze")
    assert response.status_code == 405 and "message" in response.json()


def test_other_host_names_are_refused():
    """DNS rebinding: a page from another site must not reach a loopback server's file."""
    client = TestClient(create_app(allowed_hosts=LOOPBACK_NAMES), base_url="http://127.0.0.1")
    assert client.get("/api/examples").status_code == 200
    assert client.get("/api/examples", headers={"host": "evil.example"}).status_code == 400


# -- static files --------------------------------------------------------------------------


def _raw_get(app, path: str) -> tuple[int, bytes]:
    """GET ``path`` as an ASGI scope, unnormalised (an HTTP client removes dot segments)."""
    scope = {
        "type": "http",
        "http_version": "1.1",
        "method": "GET",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "scheme": "http",
        "query_string": b"",
        "headers": [(b"host", b"127.0.0.1")],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }
    sent: list[dict] = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    anyio.run(app, scope, receive, send)
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return sent[0]["status"], body


@pytest.fixture
def static_dir(tmp_path, monkeypatch):
    static = tmp_path / "static"
    static.mkdir()
    (static / "app.js").write_text("// the page\n")
    (tmp_path / "secret.txt").write_text("secret\n")
    (static / "out.txt").symlink_to(tmp_path / "secret.txt")
    monkeypatch.setattr(serve, "STATIC_DIR", static)
    return static


def test_static_files_are_served(static_dir):
    client = TestClient(create_app())
    assert client.get("/static/app.js").text == "// the page\n"
    assert "not built yet" in client.get("/").text  # no index.html: a placeholder
    (static_dir / "index.html").write_text("<!DOCTYPE html><title>page</title>")
    response = client.get("/")
    assert response.status_code == 200 and "<title>page</title>" in response.text


@pytest.mark.parametrize(
    "path",
    [
        "/static/../secret.txt",
        "/static/../../pyproject.toml",
        "/static/%2e%2e/secret.txt",
        "/static/%2e%2e%2fsecret.txt",
        "/static/..%2fsecret.txt",
        "/static//etc/passwd",
        "/static/%2Fetc%2Fpasswd",
        f"/static/{ROOT}/pyproject.toml",
        "/static/out.txt",  # a symlink out of the directory
        "/static/",
    ],
)
def test_nothing_outside_static_is_served(static_dir, path):
    app = create_app()
    status, body = _raw_get(app, path)
    assert status in (400, 404)
    assert b"secret" not in body and b"root:" not in body and b"[project]" not in body
    response = TestClient(app).get(path)
    assert response.status_code in (400, 404) and "secret" not in response.text


# -- examples and schema -------------------------------------------------------------------


def test_examples_are_the_repository_specs(client):
    examples = client.get("/api/examples").json()
    assert [e["name"] for e in examples] == sorted(p.stem for p in SPECS_DIR.glob("*.yaml"))
    titles = {e["name"]: e["title"] for e in examples}
    assert titles["mnist_cnn"].startswith("The MNIST CNN every beginner builds")
    assert not any("yaml-language-server" in title for title in titles.values())
    response = client.get("/api/examples/mnist_cnn")
    assert response.status_code == 200 and response.text == MNIST_TEXT


@pytest.mark.parametrize("name", ["nope", "..", "mnist_cnn.yaml", "..%2Fpyproject", "%2Fetc"])
def test_unknown_examples_are_404(client, name):
    response = client.get(f"/api/examples/{name}")
    assert response.status_code == 404 and "message" in response.json()


def test_no_specs_directory_means_no_examples(tmp_path):
    client = TestClient(create_app(examples_dir=tmp_path / "missing"))
    assert client.get("/api/examples").json() == []


def test_schema(client):
    response = client.get("/api/schema")
    assert response.status_code == 200 and response.json() == spec_schema()


# -- the spec file -------------------------------------------------------------------------


def test_no_file_is_404(client):
    assert client.get("/api/file").status_code == 404
    response = client.put("/api/file", json={"text": "x"})
    assert response.status_code == 404
    assert response.json() == {"message": "the server was started without a spec file"}


def test_the_file_round_trips_and_is_replaced_atomically(tmp_path):
    path = tmp_path / "net.yaml"
    path.write_text(MNIST_TEXT)
    path.chmod(0o640)
    client = TestClient(create_app(path))
    body = client.get("/api/file").json()
    assert body == {"path": str(path), "text": MNIST_TEXT, "mtime_ns": path.stat().st_mtime_ns}
    before = path.stat().st_ino
    text = MNIST_TEXT.replace("out_features: 10", "out_features: 12") + "# édité\r\n"
    response = client.put("/api/file", json={"text": text})
    assert response.status_code == 200
    assert response.json()["mtime_ns"] == path.stat().st_mtime_ns
    assert path.read_bytes() == text.encode()  # byte for byte, \r\n kept
    assert path.stat().st_ino != before  # a new file renamed over the old one
    assert oct(path.stat().st_mode & 0o777) == oct(0o640)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["net.yaml"]  # no temporary left
    assert client.get("/api/file").json()["text"] == text


def test_saving_through_a_symlink_keeps_the_symlink(tmp_path):
    (tmp_path / "real.yaml").write_text("a\n")
    link = tmp_path / "link.yaml"
    link.symlink_to(tmp_path / "real.yaml")
    client = TestClient(create_app(link))
    assert client.put("/api/file", json={"text": "b\n"}).status_code == 200
    assert link.is_symlink() and (tmp_path / "real.yaml").read_text() == "b\n"


def test_bad_saves_are_400(tmp_path):
    path = tmp_path / "net.yaml"
    path.write_text("a\n")
    client = TestClient(create_app(path))
    assert client.put("/api/file", json={"text": 3}).status_code == 400
    assert client.put("/api/file", content=b"nope").status_code == 400
    assert path.read_text() == "a\n"


def test_a_deleted_file_is_410_and_the_server_goes_on(tmp_path):
    path = tmp_path / "net.yaml"
    path.write_text(MNIST_TEXT)
    client = TestClient(create_app(path))
    path.unlink()
    response = client.get("/api/file")
    assert response.status_code == 410
    assert response.json() == {"message": f"{path} no longer exists"}
    assert client.get("/api/examples").status_code == 200
    assert client.put("/api/file", json={"text": "b\n"}).status_code == 200  # saved again
    assert client.get("/api/file").json()["text"] == "b\n"


@pytest.mark.parametrize("content", [b"\xff\xfe not utf-8", None])
def test_an_unreadable_file_is_500(tmp_path, content):
    path = tmp_path / "net.yaml"
    if content is None:
        path.mkdir()  # reading a directory fails, as an unreadable file does
    else:
        path.write_bytes(content)
    client = TestClient(create_app(path))
    response = client.get("/api/file")
    assert response.status_code == 500
    assert response.json()["message"].startswith(str(path))
    assert client.get("/api/schema").status_code == 200


# -- compare and export ---------------------------------------------------------------------


def test_compare_is_the_library_comparison(client):
    a, b = MNIST_TEXT, (SPECS_DIR / "lenet5.yaml").read_text()
    for depth in (None, 1):
        response = client.post("/api/compare", json={"a": a, "b": b, "depth": depth})
        assert response.status_code == 200
        expected = convcalc.compare(convcalc.load_spec(a), convcalc.load_spec(b))  # by name
        assert response.json() == {
            "comparison": json.loads(json.dumps(expected.to_dict(depth))),
            "table": expected.render("table", depth),
        }


def test_compare_names_the_wrong_side(client):
    response = client.post("/api/compare", json={"a": MNIST_TEXT, "b": TOO_SMALL})
    assert response.status_code == 422
    body = response.json()
    assert body["side"] == "b" and body["errors"][0]["line"] == 4
    assert client.post("/api/compare", json={"a": MNIST_TEXT}).status_code == 400


@pytest.mark.parametrize(
    "format, media_type, suffix",
    [
        ("json", "application/json", ".json"),
        ("csv", "text/plain", ".csv"),
        ("markdown", "text/plain", ".md"),
        ("pytorch", "text/plain", ".py"),
        ("svg", "image/svg+xml", ".svg"),
    ],
)
def test_export(client, format, media_type, suffix):
    if format == "svg" and not HAS_DOT:
        pytest.skip("Graphviz's dot is not installed")
    response = client.post("/api/export", json={"spec": MNIST_TEXT, "format": format})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith(media_type)
    disposition = f'attachment; filename="mnist_cnn{suffix}"'
    assert response.headers["content-disposition"] == disposition
    if format == "json":
        assert response.json() == json.loads(cli_run("shape", str(MNIST), "-f", "json").stdout)
    elif format in ("csv", "markdown"):
        assert response.text == cli_run("shape", str(MNIST), "--format", format).stdout
    elif format == "pytorch":
        assert response.text == export_pytorch(load_spec(MNIST_TEXT, source=""))
        assert "from <string>" not in response.text  # the editor's text has no file name
    else:
        assert response.text.startswith("<svg")


def test_bad_exports(client):
    response = client.post("/api/export", json={"spec": MNIST_TEXT, "format": "exe"})
    assert response.status_code == 400 and "unknown format 'exe'" in response.json()["message"]
    response = client.post("/api/export", json={"spec": TOO_SMALL, "format": "json"})
    assert response.status_code == 422 and response.json()["errors"][0]["line"] == 4


# -- the command ---------------------------------------------------------------------------


def _serve(*args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "convcalc", "serve", *args]
    return subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )


def test_a_real_server_serves_and_stops(tmp_path):
    path = tmp_path / "net.yaml"
    path.write_text(MNIST_TEXT)
    with _serve(str(path), "--port", "0") as process:
        try:
            line = process.stdout.readline()
            url = re.search(r"http://127\.0\.0\.1:\d+/", line).group(0)
            examples = httpx.get(url + "api/examples", timeout=30).json()
            assert "mnist_cnn" in [e["name"] for e in examples]
            assert httpx.get(url + "api/file", timeout=30).json()["text"] == MNIST_TEXT
        finally:
            process.terminate()
            _, stderr = process.communicate(timeout=30)
    assert "Traceback" not in stderr


def test_a_port_in_use_says_so_and_suggests_another():
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        with _serve("--port", str(port)) as process:
            _, stderr = process.communicate(timeout=60)
    assert process.returncode == 1
    match = re.fullmatch(
        rf"error: port {port} is in use on 127\.0\.0\.1; try --port (\d+)\n", stderr
    )
    assert match and int(match.group(1)) != port


def test_serving_beyond_loopback_warns(monkeypatch):
    monkeypatch.setattr(serve, "listen", lambda host, port: socket.create_server(("127.0.0.1", 0)))
    served = []
    monkeypatch.setattr(serve, "run", lambda app, sock: served.append(sock.close()))
    result = cli_run("serve", "--host", "0.0.0.0")
    assert result.exit_code == 0 and served
    assert result.stderr.count("\n") == 1 and "0.0.0.0 is not loopback" in result.stderr
    assert re.match(r"convcalc serve: http://0\.0\.0\.0:\d+/", result.stdout)
    result = cli_run("serve")
    assert result.exit_code == 0 and result.stderr == ""


def test_open_shows_the_printed_url_once_the_port_listens(monkeypatch):
    import webbrowser

    opened = []

    def fake_open(url):  # the browser's first request must find the socket listening
        port = int(re.fullmatch(r"http://127\.0\.0\.1:(\d+)/", url).group(1))
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            opened.append(url)
        return True

    monkeypatch.setattr(webbrowser, "open", fake_open)
    monkeypatch.setattr(serve, "run", lambda app, sock: sock.close())
    result = cli_run("serve", "--port", "0", "--open")
    assert result.exit_code == 0, result.output
    assert opened == [result.stdout.split()[2]]
    assert cli_run("serve", "--port", "0").exit_code == 0 and len(opened) == 1


def test_serving_a_missing_file_is_an_error(tmp_path):
    result = cli_run("serve", str(tmp_path / "nope.yaml"))
    assert result.exit_code == 1
    assert result.stderr == f"error: {tmp_path / 'nope.yaml'}: no such file\n"


def test_shape_does_not_import_the_server():
    code = (
        "import sys; from convcalc.cli import cli\n"
        f"cli(['shape', {str(MNIST)!r}], standalone_mode=False)\n"
        "assert not {'starlette', 'uvicorn', 'torch'} & set(sys.modules), sys.modules.keys()\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
