"""URL policy, SSRF guard and robots rules: the checks that decide whether a URL may be fetched at all."""

import asyncio
import socket

import pytest

from tasks.crawl import filters, reasons
from tasks.crawl.config import CrawlConfig
from tasks.crawl.filters import UrlPolicy, parse_domain_list, registrable_domain
from tasks.crawl.netguard import AddressPolicy, BlockedAddress, GuardedResolver
from tasks.crawl.robots import parse_robots, x_robots_opt_out


def test_registrable_domain_uses_the_bundled_suffix_list(monkeypatch):
    def no_network(*a, **k):
        raise AssertionError("the suffix list must come from the bundled snapshot")

    monkeypatch.setattr(socket, "create_connection", no_network)
    filters._extractor.cache_clear()
    assert registrable_domain("a.b.example.co.uk") == "example.co.uk"
    assert registrable_domain("user.github.io") == "user.github.io"  # private suffix section
    assert registrable_domain("127.0.0.1") == "127.0.0.1"


def test_domain_lists(tmp_path):
    blocklist = tmp_path / "block.txt"
    blocklist.write_text("# comment\n0.0.0.0 tracker.net\n*.bad.co.uk\n\nevil.example.com # inline\n")
    assert parse_domain_list(blocklist.read_text()) == {"tracker.net", "bad.co.uk", "evil.example.com"}
    policy = UrlPolicy(CrawlConfig(domain_blocklist_uris=[str(blocklist)], blocked_domains=["Spam.ORG"]))
    assert policy.check("http://img.tracker.net/x.jpg") == reasons.DOMAIN_BLOCKED
    assert policy.check("http://cdn.bad.co.uk/x.jpg") == reasons.DOMAIN_BLOCKED
    assert policy.check("http://a.spam.org/x.jpg") == reasons.DOMAIN_BLOCKED
    assert policy.check("http://evil.example.com/x.jpg") == reasons.DOMAIN_BLOCKED
    assert policy.check("http://good.example.com/x.jpg") is None  # a sibling of a blocked host is not blocked
    assert policy.check("http://nottracker.net/x.jpg") is None

    allow = UrlPolicy(CrawlConfig(allowed_domains=["example.com"]))
    assert allow.check("https://deep.sub.example.com/x.jpg") is None
    assert allow.check("https://example.org/x.jpg") == reasons.DOMAIN_NOT_ALLOWED


def test_scheme_length_and_patterns():
    policy = UrlPolicy(CrawlConfig(exclude_url_patterns=[r"/ads?/", r"\.gif$"], max_url_length=100))
    assert policy.check("ftp://example.com/x.jpg") == reasons.SCHEME
    assert policy.check("data:image/png;base64,AAA") == reasons.SCHEME
    assert policy.check("http://example.com/ad/x.jpg") == reasons.URL_PATTERN
    assert policy.check("http://example.com/x.gif") == reasons.URL_PATTERN
    assert policy.check("http://example.com/" + "x" * 100) == reasons.URL_TOO_LONG
    assert policy.check("http://example.com/adverb.jpg") is None
    with pytest.raises(ValueError):
        CrawlConfig(exclude_url_patterns=["("])


@pytest.mark.parametrize(
    "address, public",
    [("93.184.216.34", True), ("127.0.0.1", False), ("10.1.2.3", False), ("192.168.0.1", False),
     ("172.16.5.4", False), ("169.254.169.254", False), ("100.64.0.1", False), ("0.0.0.0", False),
     ("224.0.0.1", False), ("::1", False), ("fe80::1", False), ("fc00::1", False), ("::ffff:127.0.0.1", False),
     ("2606:4700::1111", True)],
)
def test_address_policy(address, public):
    assert AddressPolicy([]).permits(address) is public


def test_allowlisted_networks_and_literals():
    policy = AddressPolicy(["127.0.0.1/32"])
    assert policy.permits("127.0.0.1") and not policy.permits("127.0.0.2")
    assert policy.check_literal("[::1]") is False
    assert policy.check_literal("example.com") is None
    with pytest.raises(ValueError):
        CrawlConfig(allow_private_networks=["not-a-cidr"])


def test_guarded_resolver_checks_the_address_it_returns():
    async def go():
        resolver = GuardedResolver(AddressPolicy(["127.0.0.1/32"]),
                                   {"ok.test": "127.0.0.1:8080", "inner.test:80": "10.0.0.1:80"})
        try:
            ok = await resolver.resolve("ok.test", 80)
            assert [(r["host"], r["port"]) for r in ok] == [("127.0.0.1", 8080)]
            with pytest.raises(BlockedAddress):
                await resolver.resolve("inner.test", 80)
        finally:
            await resolver.close()
        strict = GuardedResolver(AddressPolicy([]))
        try:
            with pytest.raises(BlockedAddress):
                await strict.resolve("localhost", 80)  # real resolution to loopback
        finally:
            await strict.close()

    asyncio.run(go())


def test_robots_status_semantics():
    rules = parse_robots(200, b"User-agent: lvd-crawler\nDisallow: /private/\n\nUser-agent: *\nDisallow: /\n")
    assert rules.can_fetch("lvd-crawler", "http://a.com/pics/1.jpg")
    assert not rules.can_fetch("lvd-crawler", "http://a.com/private/1.jpg")
    assert not rules.can_fetch("otherbot", "http://a.com/pics/1.jpg")
    assert not parse_robots(403, b"").can_fetch("lvd-crawler", "http://a.com/x")
    assert parse_robots(404, b"").can_fetch("lvd-crawler", "http://a.com/x")


def test_x_robots_tag_scoping():
    blocked = ["noai", "noimageai"]
    assert x_robots_opt_out(["noai"], "lvd-crawler", blocked) == "noai"
    assert x_robots_opt_out(["noindex, NoImageAI"], "lvd-crawler", blocked) == "noimageai"
    assert x_robots_opt_out(["otherbot: noai"], "lvd-crawler", blocked) is None
    assert x_robots_opt_out(["lvd-crawler: noai"], "lvd-crawler", blocked) == "noai"
    assert x_robots_opt_out(["unavailable_after: 25 Jun 2010 15:00:00 PST, noai"], "lvd-crawler", blocked) == "noai"
    assert x_robots_opt_out(["noindex", "nofollow"], "lvd-crawler", blocked) is None
