"""The page's routes in the REST app (no browser, no worker): the page and its files are served
with their content types and stay open when the service needs an API key, like /docs; the
samples are API (/v1) and need the key; a name outside the page's files is a 404, never a path."""

import asyncio

import httpx
import pytest

from service.gateway.context import ServiceContext
from service.gateway.rest import create_app
from service.settings import Settings

KEY = "page-key"


class Client:
    """GETs straight into the ASGI app (the Guard middleware included)."""

    def __init__(self, app):
        self.app = app

    def get(self, path: str, headers: dict | None = None) -> httpx.Response:
        async def fetch():
            transport = httpx.ASGITransport(app=self.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://page") as client:
                return await client.get(path, headers=headers)

        return asyncio.run(fetch())


@pytest.fixture(scope="module")
def client():
    return Client(create_app(ServiceContext.create(Settings(api_keys=KEY), None)))


def test_the_page_and_its_files_are_open(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'href="/docs"' in page.text
    for name, kind in [("app.js", "text/javascript"), ("rle.js", "text/javascript"),
                       ("style.css", "text/css")]:  # fmt: skip
        response = client.get(f"/static/{name}")
        assert response.status_code == 200 and response.headers["content-type"].startswith(kind)


def test_the_samples_need_the_key(client):
    refused = client.get("/v1/samples")
    assert refused.status_code == 401
    assert refused.headers["content-type"] == "application/problem+json"
    listed = client.get("/v1/samples", headers={"X-API-Key": KEY})
    assert listed.status_code == 200 and len(listed.json()["samples"]) >= 1
    unknown = client.get("/v1/samples/nothing.mp4", headers={"X-API-Key": KEY})
    assert unknown.status_code == 404 and "shapes-a" in unknown.json()["detail"]


@pytest.mark.parametrize("path", ["/static/router.py", "/static/..%2Frouter.py", "/static/"])
def test_only_the_pages_files_are_served(client, path):
    assert client.get(path).status_code == 404


def test_a_path_that_only_starts_like_an_open_one_needs_the_key(client):
    assert client.get("/staticfiles").status_code == 401
