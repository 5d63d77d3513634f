"""What a POST /v1/segment answer is made of, from `Accept` and the model's task
(service.gateway.media): the order among several, wildcards, q=0, and what is refused."""

import pytest

from service.gateway.media import JSON, MP4, NDJSON, PNG, ZIP, NotAcceptable, acceptable

BROWSER = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"


@pytest.mark.parametrize(
    "accept, task, expected",
    [
        (None, "vis", [JSON]),
        ("", "panoptic", [JSON]),
        (BROWSER, "vis", [JSON]),
        ("application/*", "vos", [JSON]),  # a wildcard is JSON, never a zip nobody named
        ("application/zip", "panoptic", [ZIP]),
        ("application/zip", "vos", [ZIP]),
        ("video/*", "instance", [MP4]),
        ("Application/JSON; charset=utf-8", "vis", [JSON]),
        # Several: in the gateway's order (a stream, files, drawn results, JSON).
        (f"{JSON}, {MP4}, {NDJSON}", "vis", [NDJSON, MP4, JSON]),
        (f"{MP4}, {PNG}", "panoptic", [PNG, MP4]),
        # What the model cannot give is passed over when something else is named.
        (f"{ZIP}, {JSON};q=0.5", "vis", [JSON]),
        (f"text/csv, {ZIP};q=0, {JSON}", "panoptic", [JSON]),
    ],
)
def test_acceptable(accept, task, expected):
    assert acceptable(accept, task) == expected


@pytest.mark.parametrize(
    "accept, task, words",
    [
        (ZIP, "vis", "a vis model answers no zip"),
        (ZIP, "instance", "panoptic pngs and json of panoptic models"),
        ("text/csv", "panoptic", "a panoptic model answers"),
        (f"{JSON};q=0", "vis", "cannot answer"),  # refused by the client itself
        ("image/webp", "vos", "cannot answer"),
    ],
)
def test_not_acceptable(accept, task, words):
    with pytest.raises(NotAcceptable) as refused:
        acceptable(accept, task)
    assert words in refused.value.detail.lower()
