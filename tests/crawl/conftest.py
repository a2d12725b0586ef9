"""A demo web built once per session and served on 127.0.0.1 for the crawl tests."""

from __future__ import annotations

import pytest

from lvd.demo_web import build_demo_web, serve_demo_web


@pytest.fixture(scope="session")
def crawl_web(tmp_path_factory):
    return build_demo_web(tmp_path_factory.mktemp("crawl-web"), n_images=100, seed=3)


@pytest.fixture(scope="module")
def crawl_server(crawl_web):
    with serve_demo_web(crawl_web.root) as server:
        yield server
