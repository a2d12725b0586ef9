"""Shared-limit settings, names and refusals that need no Prefect server; the storage request gate on real S3."""

import re
from dataclasses import dataclass, field

import pytest
from pydantic import ValidationError

from storage.uri import join, read_bytes, request_gate, write_bytes_atomic
from tasks.crawl.config import CrawlConfig
from tasks.crawl.fetch import Fetcher
from tasks.crawl.shared_limits import SharedHostLimits, prepare_crawl_limits
from tasks.global_limits import GlobalLimitError, limit_name

PREFECT_NAME = re.compile(r"^[a-z0-9._-]+$")


def test_limit_names_keep_to_a_safe_charset_and_never_merge_two_hosts():
    assert limit_name("host", "img.example.com") == "lvd-host-img.example.com"
    odd = [limit_name("host", h) for h in ("::1", "1", "a%2fb", "a/b", "xn--bcher-kva.example")]
    assert all(PREFECT_NAME.match(n) for n in odd), odd
    assert len(set(odd)) == len(odd)


def test_an_s3_rate_without_prefect_mode_is_refused_naming_the_key():
    with pytest.raises(ValidationError, match="global_limits.s3_requests_per_second needs global_limits.mode"):
        CrawlConfig(global_limits={"s3_requests_per_second": 10})
    assert CrawlConfig(global_limits={"mode": "prefect", "s3_requests_per_second": 10})


@pytest.fixture
def no_prefect_server(monkeypatch):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        yield


def test_prefect_mode_without_a_shared_server_is_refused(no_prefect_server):
    cfg = CrawlConfig(global_limits={"mode": "prefect"})
    with pytest.raises(GlobalLimitError, match=r"crawl.global_limits.mode='prefect' needs .*PREFECT_API_URL"):
        prepare_crawl_limits(cfg)
    with pytest.raises(GlobalLimitError, match="PREFECT_API_URL"):
        Fetcher(cfg)
    assert prepare_crawl_limits(CrawlConfig()) == []  # local mode needs no server


def test_one_limit_per_host_or_per_registrable_domain():
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: "http://127.0.0.1:9/api"}):  # named, never contacted here
        by_host = SharedHostLimits(CrawlConfig(global_limits={"mode": "prefect"}))
        by_domain = SharedHostLimits(CrawlConfig(global_limits={"mode": "prefect", "host_key": "domain"}))
    urls = ["http://img1.cdn.example.co.uk/a.jpg", "https://img2.cdn.example.co.uk:8443/b.jpg"]
    assert [by_host.name_for(u) for u in urls] == ["lvd-host-img1.cdn.example.co.uk", "lvd-host-img2.cdn.example.co.uk"]
    assert {by_domain.name_for(u) for u in urls} == {"lvd-host-example.co.uk"}
    assert by_host.name_for("http://img1.cdn.example.co.uk:8080/c.jpg") == by_host.name_for(urls[0])


@dataclass(frozen=True)
class CountingGate:
    """A request gate that only counts what passes it (equal instances are one gate)."""

    label: str
    seen: list = field(default_factory=list, compare=False, hash=False)

    def __call__(self, uri: str, action: str) -> None:
        self.seen.append((action, uri.rsplit("/", 1)[-1]))


def test_every_s3_request_passes_the_gate_once_and_local_files_never(s3_root, tmp_path):
    gate = CountingGate("s3")
    with request_gate(gate), request_gate(CountingGate("s3", gate.seen)):  # two parts, one gate
        write_bytes_atomic(join(s3_root, "a.bin"), b"1")
        assert read_bytes(join(s3_root, "a.bin")) == b"1"
        write_bytes_atomic(str(tmp_path / "local.bin"), b"2")
    write_bytes_atomic(join(s3_root, "b.bin"), b"3")  # after the block: no gate
    assert gate.seen == [("writing", "a.bin"), ("reading", "a.bin")]
