"""REST edges found by trying hostile input on a real `vidserve serve`: odd upload file names,
error details that must not show the server's files, and documentation pages that work offline."""

import re
import tempfile
from urllib.parse import urljoin, urlparse

import httpx
import pytest

from tests.service.test_rest import truncated

BOUNDARY = "vidserve-test-boundary"


def raw_upload(server, filename: bytes, content: bytes, fields=None) -> httpx.Response:
    """POST /v1/segment with a multipart body written byte by byte, so that the file name goes
    to the server exactly as given (httpx itself would percent-encode a NUL byte)."""
    parts = []
    for name, value in (fields or {}).items():
        parts.append(
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'
            f"{value}\r\n".encode()
        )
    parts.append(
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="video"; filename="'.encode()
        + filename
        + b'"\r\nContent-Type: application/octet-stream\r\n\r\n'
        + content
        + b"\r\n"
    )
    parts.append(f"--{BOUNDARY}--\r\n".encode())
    return httpx.post(
        f"{server.url}/v1/segment",
        content=b"".join(parts),
        headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"},
        timeout=120,
    )


@pytest.mark.parametrize(
    "filename",
    [
        b"v\x00.mp4",
        b"v.mp4\x00",
        b"v.mp\x004",
        b"\x00",
        b"../../etc/v.mp4",
        b"v./../../x",
        b"v.mp4/..",
        b"v." + b"x" * 300,
        "v\u00e9d\u00e9o.\u00e9mp4".encode(),
    ],
    ids=repr,
)
def test_an_odd_file_name_never_costs_a_500(server, video_file, filename):
    response = raw_upload(server, filename, video_file.read_bytes(), {"max_frames": "2"})
    assert response.status_code == 200, response.text
    assert len(response.json()["frames"]) == 2


def test_a_nul_byte_in_the_name_of_a_bad_upload_gets_its_problem(server):
    response = raw_upload(server, b"v.mp4\x00", b"hello, I am not a video\n" * 10)
    assert response.status_code == 415, response.text
    assert response.headers["content-type"] == "application/problem+json"


def half_written_mp4(video_file) -> bytes:
    """The header of an mp4 and no more: the container sniff passes, the demuxer fails."""
    return video_file.read_bytes()[:64]


@pytest.mark.parametrize(
    "make", [truncated, half_written_mp4, lambda _: b"\0\0\0\x18ftypmp42" + b"\0" * 500]
)
def test_no_error_detail_names_a_server_file(server, video_file, make):
    response = raw_upload(server, b"clip.mp4", make(video_file))
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert "cannot be decoded" in detail or "no frames" in detail, detail
    for leak in ("vidserve-", tempfile.gettempdir(), "/tmp", ".mp4"):
        assert leak not in detail, detail


def local_urls(server, page: str) -> list[str]:
    """The page's script, style and icon addresses, after checking that none is outside."""
    response = httpx.get(f"{server.url}{page}")
    assert response.status_code == 200
    html = response.text
    for absolute in re.findall(r"""https?://[^\s"'<>)]+""", html):
        assert urlparse(absolute).netloc == urlparse(server.url).netloc, absolute
    found = re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)["']""", html)
    found += re.findall(r"""url:\s*["']([^"']+)["']""", html)  # the OpenAPI document
    return [urljoin(f"{server.url}{page}", url) for url in found]


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_documentation_pages_need_nothing_from_outside(server, page):
    urls = local_urls(server, page)
    assets = [u for u in urls if u.endswith((".js", ".css"))]
    assert any(u.endswith(".js") for u in assets), urls
    if page == "/docs":
        assert any(u.endswith(".css") for u in assets), urls
        assert "validatorUrl" in httpx.get(f"{server.url}{page}").text  # no online badge
    for url in urls:
        response = httpx.get(url)
        assert response.status_code == 200, url
        assert len(response.content) > 100, url
    bundle = next(u for u in assets if u.endswith(".js"))
    assert len(httpx.get(bundle).content) > 500_000, "the whole UI, not a stub"
