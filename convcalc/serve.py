"""``convcalc serve``: the playground page's local server (Starlette, run by uvicorn).

Imported only by the ``serve`` command: ``import convcalc`` never imports Starlette.

Routes (every ``/api`` answer is JSON, errors too: ``{"message": one sentence}``)::

    GET  /                      the page (static/index.html)
    GET  /static/{path}         files inside the package's static directory, nothing else
    POST /api/analyze           {"spec", "explain"?, "picture"?, "depth"?, "table"?} ->
                                report, warnings, svg, picture_error, table (the text
                                table, when asked); 422 with the spec's errors
    POST /api/compare           {"a", "b", "depth"?} -> comparison, table
    POST /api/export            {"spec", "format"} -> the file, as an attachment
    GET  /api/examples          [{"name", "title"}] for the repository's specs/*.yaml
    GET  /api/examples/{name}   one example's YAML text
    GET  /api/schema            the spec format's JSON Schema
    GET  /api/file              {"path", "text", "mtime_ns"} of the spec file being served
    PUT  /api/file              {"text"} -> written atomically; {"path", "mtime_ns"}

Spec text from a request is only ever parsed as YAML, never read as a file path; the
only file a request can read or write is the one named on the command line.

An analysis depends on nothing but the request, so the last ``CACHED_ANALYSES`` answers
are kept (as JSON bytes): a spec sent again (undo, a second tab, a reloaded link) is
answered without analysing it again.
"""

from __future__ import annotations

import errno
import ipaddress
import json
import logging
import os
import re
import socket
import stat
import tempfile
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache, wraps
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from convcalc.analysis import analyze
from convcalc.compare import Comparison
from convcalc.errors import ConvCalcError, Problem, SpecError
from convcalc.loader import MAX_SPEC_BYTES, load_spec
from convcalc.report import Report
from convcalc.spec import Network

__all__ = ["LOOPBACK_NAMES", "MAX_BODY_BYTES", "create_app", "is_loopback", "listen", "run"]

STATIC_DIR = Path(__file__).resolve().parent / "static"
SPECS_DIR = Path(__file__).resolve().parent.parent / "specs"  # the repository's, if any
MAX_BODY_BYTES = 1024 * 1024  # a request body; specs are a few kilobytes
MAX_ERRORS = 100  # problems a 422 lists
CACHED_ANALYSES = 64  # answers of /api/analyze kept; at most 64 x ~1 MiB
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1", "[::1]")
EXPORTS = {  # format: (suffix, content type)
    "json": (".json", "application/json"),
    "csv": (".csv", "text/plain; charset=utf-8"),
    "markdown": (".md", "text/plain; charset=utf-8"),
    "pytorch": (".py", "text/plain; charset=utf-8"),
    "svg": (".svg", "image/svg+xml"),
}
PLACEHOLDER = (
    '<!DOCTYPE html>\n<html lang="en">\n<head><meta charset="utf-8"><title>convcalc</title>'
    "</head>\n<body><p>convcalc serve is running; the page's files are not built yet "
    '(<a href="/api/examples">/api/examples</a>).</p></body>\n</html>\n'
)

_log = logging.getLogger("convcalc.serve")


class _Refused(Exception):
    """A request answered with ``status`` and one sentence."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _message(status: int, message: str) -> JSONResponse:
    return JSONResponse({"message": message}, status_code=status)


def _unprocessable(error: ConvCalcError, **extra: Any) -> JSONResponse:
    """422: the message, and each problem with the line and layer path it names."""
    problems = error.problems if isinstance(error, SpecError) else [Problem(str(error))]
    errors = [
        {"line": problem.line, "path": problem.path, "message": problem.message}
        for problem in problems[:MAX_ERRORS]
    ]
    body = {"message": str(error), "errors": errors, **extra}
    return JSONResponse(body, status_code=422)


Handler = Callable[[Request], Awaitable[Response]]


def _api(handler: Handler) -> Handler:
    """Every refusal and error as JSON; an unexpected exception is a 500, never a crash."""

    @wraps(handler)
    async def wrapped(request: Request) -> Response:
        try:
            return await handler(request)
        except _Refused as refusal:
            return _message(refusal.status, str(refusal))
        except ConvCalcError as error:
            return _unprocessable(error)
        except Exception as error:
            _log.exception("%s %s failed", request.method, request.url.path)
            return _message(500, f"the server failed on this request ({type(error).__name__})")

    return wrapped


async def _body(request: Request) -> dict[str, Any]:
    """The request's JSON object, read no further than ``MAX_BODY_BYTES``."""
    too_large = _Refused(413, f"the request body is larger than {MAX_BODY_BYTES:,} bytes")
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > MAX_BODY_BYTES:
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise too_large
        chunks.append(chunk)
    try:
        data = json.loads(b"".join(chunks))
    except (ValueError, RecursionError):
        raise _Refused(400, "the request body is not JSON") from None
    if not isinstance(data, dict):
        raise _Refused(400, "the request body must be a JSON object")
    return data


def _text(data: dict[str, Any], key: str) -> str:
    value = data.get(key)
    if not isinstance(value, str):
        raise _Refused(400, f"the request needs {key!r}, a string")
    return value


def _flag(data: dict[str, Any], key: str, default: bool) -> bool:
    value = data.get(key, default)
    if not isinstance(value, bool):
        raise _Refused(400, f"{key!r} must be true or false")
    return value


def _depth(data: dict[str, Any]) -> int | None:
    value = data.get("depth")
    if value is not None and (type(value) is not int or value < 1):
        raise _Refused(400, "'depth' must be a positive integer or null")
    return value


def _network(text: str) -> Network:
    """The spec in ``text``. load_spec reads a one-line string naming a file as that file;
    text from a request is YAML, always: with a newline it is never taken for a path."""
    return load_spec(text if "\n" in text else text + "\n", source="")


# -- analysis ------------------------------------------------------------------------------


def _picture(report: Report, depth: int | None) -> tuple[str | None, str | None]:
    """The SVG, or why there is none (no Graphviz, or drawing failed)."""
    from convcalc.draw import svg_picture

    assert report.network is not None
    try:
        return svg_picture(report.network, report, depth), None
    except ConvCalcError as error:
        return None, str(error)
    except Exception as error:
        _log.exception("drawing failed")
        return None, f"the picture could not be drawn ({type(error).__name__})"


@lru_cache(maxsize=CACHED_ANALYSES)
def _analysis(text: str, explain: bool, picture: bool, depth: int | None, table: bool) -> bytes:
    """The answer to /api/analyze, as JSON (errors are raised, never kept)."""
    report = analyze(_network(text), explain=explain)
    svg, picture_error = _picture(report, depth) if picture else (None, None)
    body = {
        "report": report.to_dict(),
        "table": report.render("table", explain=explain) if table else None,
        "warnings": [
            {"path": warning.path, "message": warning.message, "line": warning.line}
            for warning in report.warnings
        ],
        "svg": svg,
        "picture_error": picture_error,
    }
    return bytes(JSONResponse(body).body)


@_api
async def analyze_endpoint(request: Request) -> Response:
    data = await _body(request)
    text, depth = _text(data, "spec"), _depth(data)
    explain, picture = _flag(data, "explain", False), _flag(data, "picture", True)
    table = _flag(data, "table", False)
    body = await run_in_threadpool(_analysis, text, explain, picture, depth, table)
    return Response(body, media_type="application/json")


def _comparison(a: str, b: str, depth: int | None) -> Response:
    reports = []
    for side, text in (("a", a), ("b", b)):
        try:
            reports.append(analyze(_network(text)))
        except ConvCalcError as error:  # say which of the two specs is wrong
            return _unprocessable(error, side=side)
    comparison = Comparison(reports[0], reports[1], reports[0].name, reports[1].name)
    body = {"comparison": comparison.to_dict(depth), "table": comparison.render("table", depth)}
    return JSONResponse(body)


@_api
async def compare_endpoint(request: Request) -> Response:
    data = await _body(request)
    a, b, depth = _text(data, "a"), _text(data, "b"), _depth(data)
    return await run_in_threadpool(_comparison, a, b, depth)


def _export(text: str, format: str, depth: int | None) -> Response:
    report = analyze(_network(text))
    assert report.network is not None
    if format == "pytorch":
        from convcalc.export import export_pytorch

        content = export_pytorch(report.network)
    elif format == "svg":
        from convcalc.draw import svg_picture

        content = svg_picture(report.network, report, depth)
    else:
        content = report.render(format, depth)
    suffix, media_type = EXPORTS[format]
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", report.name).strip("._")[:100] or "spec"
    headers = {"Content-Disposition": f'attachment; filename="{name}{suffix}"'}
    return Response(content, media_type=media_type, headers=headers)


@_api
async def export_endpoint(request: Request) -> Response:
    data = await _body(request)
    text, format, depth = _text(data, "spec"), _text(data, "format"), _depth(data)
    if format not in EXPORTS:
        raise _Refused(400, f"unknown format {format[:40]!r}; use one of {', '.join(EXPORTS)}")
    return await run_in_threadpool(_export, text, format, depth)


# -- examples and schema -------------------------------------------------------------------


def _title(path: Path) -> str:
    """The first comment line (not an editor's modeline), else the file's name."""
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        comment = line.lstrip("#").strip()
        if comment and not comment.startswith("yaml-language-server:"):
            return comment
    return path.stem


def _examples(directory: Path | None) -> dict[str, tuple[str, Path]]:
    """Name: (title, path) for each spec in ``directory``; none when it does not exist."""
    if directory is None or not directory.is_dir():
        return {}
    return {path.stem: (_title(path), path) for path in sorted(directory.glob("*.yaml"))}


# -- the spec file -------------------------------------------------------------------------


@dataclass(frozen=True)
class _SpecFile:
    path: Path

    def read(self) -> dict[str, Any]:
        try:
            with self.path.open("rb") as file:
                mtime_ns = os.fstat(file.fileno()).st_mtime_ns
                raw = file.read(MAX_SPEC_BYTES + 1)
        except FileNotFoundError:
            raise _Refused(410, f"{self.path} no longer exists") from None
        except OSError as error:
            raise _Refused(500, f"{self.path} cannot be read: {error.strerror}") from None
        if len(raw) > MAX_SPEC_BYTES:
            raise _Refused(500, f"{self.path} is larger than {MAX_SPEC_BYTES:,} bytes")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise _Refused(500, f"{self.path} is not UTF-8 text") from None
        return {"path": str(self.path), "text": text, "mtime_ns": mtime_ns}

    def write(self, text: str) -> dict[str, Any]:
        """Write ``text`` to a temporary file beside the spec and rename it over the spec:
        a reader sees the old file or the new one, never half of one."""
        target = Path(os.path.realpath(self.path))  # a symlinked spec stays a symlink
        try:
            mode = stat.S_IMODE(os.stat(target).st_mode)
        except FileNotFoundError:  # deleted meanwhile: saving creates it again
            mode = 0o644
        try:
            descriptor, temporary = tempfile.mkstemp(
                prefix=f".{target.name}.", suffix=".tmp", dir=target.parent
            )
        except OSError as error:
            raise _Refused(500, f"{self.path} cannot be saved: {error.strerror}") from None
        try:
            with os.fdopen(descriptor, "w", encoding="utf-8", newline="") as file:
                file.write(text)
                file.flush()
                os.fsync(file.fileno())
            os.chmod(temporary, mode)
            os.replace(temporary, target)
        except OSError as error:
            Path(temporary).unlink(missing_ok=True)
            raise _Refused(500, f"{self.path} cannot be saved: {error.strerror}") from None
        return {"path": str(self.path), "mtime_ns": os.stat(target).st_mtime_ns}


# -- the application -----------------------------------------------------------------------


def create_app(
    spec_path: Path | None = None,
    *,
    allowed_hosts: Sequence[str] | None = None,
    examples_dir: Path | None = SPECS_DIR,
) -> Starlette:
    """The server's ASGI application. ``spec_path`` is the one file GET and PUT
    /api/file read and write; ``allowed_hosts`` (Host headers; None = any) guards a
    loopback server against DNS rebinding; ``examples_dir`` holds the example specs."""
    spec_file = None if spec_path is None else _SpecFile(Path(spec_path))
    examples = _examples(examples_dir)
    schema: dict[str, Any] = {}

    async def index(request: Request) -> Response:
        page = STATIC_DIR / "index.html"
        return FileResponse(page) if page.is_file() else HTMLResponse(PLACEHOLDER)

    @_api
    async def example_list(request: Request) -> Response:
        return JSONResponse([{"name": k, "title": title} for k, (title, _) in examples.items()])

    @_api
    async def example(request: Request) -> Response:
        found = examples.get(request.path_params["name"])
        if found is None:
            raise _Refused(404, "there is no example of that name")
        return Response(found[1].read_text(encoding="utf-8"), media_type="text/yaml")

    @_api
    async def schema_endpoint(request: Request) -> Response:
        if not schema:
            from convcalc.schema import spec_schema

            schema.update(spec_schema())
        return JSONResponse(schema)

    @_api
    async def file_endpoint(request: Request) -> Response:
        if spec_file is None:
            raise _Refused(404, "the server was started without a spec file")
        if request.method == "GET":
            return JSONResponse(await run_in_threadpool(spec_file.read))
        text = _text(await _body(request), "text")
        return JSONResponse(await run_in_threadpool(spec_file.write, text))

    async def http_error(request: Request, error: Exception) -> Response:
        assert isinstance(error, HTTPException)
        if error.status_code == 404:
            return _message(404, "there is nothing at this address")
        return _message(error.status_code, str(error.detail))

    routes = [
        Route("/", index),
        Route("/api/analyze", analyze_endpoint, methods=["POST"]),
        Route("/api/compare", compare_endpoint, methods=["POST"]),
        Route("/api/export", export_endpoint, methods=["POST"]),
        Route("/api/examples", example_list),
        Route("/api/examples/{name}", example),
        Route("/api/schema", schema_endpoint),
        Route("/api/file", file_endpoint, methods=["GET", "PUT"]),
        Mount("/static", StaticFiles(directory=STATIC_DIR, check_dir=False), name="static"),
    ]
    middleware = []
    if allowed_hosts is not None:
        middleware.append(Middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts)))
    return Starlette(
        routes=routes, middleware=middleware, exception_handlers={HTTPException: http_error}
    )


# -- running -------------------------------------------------------------------------------


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable from this machine only.

    >>> is_loopback("127.0.0.1"), is_loopback("localhost"), is_loopback("0.0.0.0")
    (True, True, False)
    """
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host.strip("[]"), port), family=family)


def listen(host: str, port: int) -> socket.socket:
    """A listening socket, or one sentence saying why there is none (for a port in use,
    with a free one to try)."""
    try:
        return _bind(host, port)
    except socket.gaierror:
        raise ConvCalcError(f"cannot listen on {host!r}: no such host") from None
    except OSError as error:
        if error.errno != errno.EADDRINUSE:
            raise ConvCalcError(f"cannot listen on {host}:{port}: {error.strerror}") from None
    with _bind(host, 0) as free:
        other = free.getsockname()[1]
    raise ConvCalcError(f"port {port} is in use on {host}; try --port {other}")


def run(app: Starlette, sock: socket.socket) -> None:
    """Serve ``app`` on the listening ``sock`` until interrupted (Ctrl+C)."""
    import uvicorn

    config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=2)
    uvicorn.Server(config).run(sockets=[sock])
