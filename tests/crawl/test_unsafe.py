"""Unsafe-site filtering: UT1-format category lists by URI, the list datatrove ships, banned words, records."""

import io
import tarfile

import pytest

from storage.tables import read_table
from storage.uri import join
from tasks.crawl import reasons
from tasks.crawl.config import CrawlConfig, UnsafeFilterConfig
from tasks.crawl.filters import UrlPolicy
from tasks.crawl.stage import crawl_part, finalize_crawl, plan_crawl_parts
from tasks.crawl.unsafe import UnsafeFilter, UnsafeListError


def _ut1_archive(path, categories: dict[str, dict[str, str]]) -> str:
    with tarfile.open(path, "w:gz") as tar:
        for category, files in categories.items():
            for kind, text in files.items():
                data = text.encode()
                info = tarfile.TarInfo(f"blacklists/{category}/{kind}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return f"file://{path}"


@pytest.fixture
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LVD_LIST_CACHE", str(tmp_path / "cache"))


def test_category_lists_refuse_domains_subdomains_and_urls_naming_list_and_category(tmp_path, isolated_cache):
    uri = _ut1_archive(tmp_path / "ut1.tar.gz", {
        "adult": {"domains": "# comment\nbad-pics.example\n", "urls": "host.example/private/gallery\n"},
        "gambling": {"domains": "casino.example\n"},
        "malware": {"domains": "dropper.example\n"},
    })
    f = UnsafeFilter(UnsafeFilterConfig(enabled=True, builtin_lists=False, banned_words=False, list_uris=[uri]))
    assert f.check("https://bad-pics.example/a.jpg") == (reasons.UNSAFE_DOMAIN, "ut1:adult")
    assert f.check("https://cdn.img.bad-pics.example/a.jpg") == (reasons.UNSAFE_DOMAIN, "ut1:adult")
    assert f.check("http://dropper.example/x.png") == (reasons.UNSAFE_DOMAIN, "ut1:malware")
    assert f.check("https://www.host.example/private/gallery") == (reasons.UNSAFE_URL, "ut1:adult")
    assert f.check("https://host.example/public/gallery") is None
    assert f.check("https://not-bad-pics.example/a.jpg") is None
    # Categories not asked for are not applied.
    assert f.check("https://casino.example/chips.jpg") is None
    gambling = UnsafeFilter(UnsafeFilterConfig(enabled=True, builtin_lists=False, banned_words=False,
                                               list_uris=[uri], categories=["gambling"]))
    assert gambling.check("https://casino.example/chips.jpg") == (reasons.UNSAFE_DOMAIN, "ut1:gambling")
    assert gambling.check("https://bad-pics.example/a.jpg") is None


def test_a_folder_list_and_unreadable_lists(tmp_path, isolated_cache):
    folder = tmp_path / "lists" / "phishing"
    folder.mkdir(parents=True)
    (folder / "domains").write_text("login-bank.example\n")
    f = UnsafeFilter(UnsafeFilterConfig(enabled=True, builtin_lists=False, banned_words=False,
                                        list_uris=[f"file://{tmp_path}/lists"]))
    assert f.check("https://login-bank.example/logo.png") == (reasons.UNSAFE_DOMAIN, "lists:phishing")
    with pytest.raises(UnsafeListError, match="no <category>/domains"):
        UnsafeFilter(UnsafeFilterConfig(enabled=True, builtin_lists=False, list_uris=[f"file://{tmp_path}/cache"]))
    with pytest.raises(UnsafeListError, match="cannot be read"):
        UnsafeFilter(UnsafeFilterConfig(enabled=True, builtin_lists=False, list_uris=[f"file://{tmp_path}/no.tar.gz"]))


def test_banned_words_match_words_not_innocent_substrings():
    f = UnsafeFilter(UnsafeFilterConfig(enabled=True, builtin_lists=False))
    assert f.check("https://cdn.example.org/blowjob/1.jpg") == (reasons.BANNED_WORD, "blowjob")
    assert f.check("https://img.example.org/gallery/Busty%20Women.jpg")[0] == reasons.BANNED_WORD
    for url in ["https://en.wikipedia.org/wiki/Classic_grass.jpg", "https://example.com/Scunthorpe/essex.jpg",
                "https://www.flickr.com/photos/assets/cat.jpg", "https://example.com/analysis/therapist.png"]:
        assert f.check(url) is None, url


def test_the_shipped_list_refuses_known_adult_domains_and_passes_common_ones():
    # The UT1 adult category as datatrove ships it; built into the digest cache once per machine.
    f = UnsafeFilter(UnsafeFilterConfig(enabled=True, banned_words=False))
    assert len(f.lists[0].domains) > 4_000_000
    assert f.check("https://img.0-1avsex.com/a.jpg") == (reasons.UNSAFE_DOMAIN, "datatrove-ut1:adult")
    for url in ["https://upload.wikimedia.org/x.jpg", "https://www.flickr.com/photos/x.jpg",
                "https://images.unsplash.com/x.jpg", "https://github.com/x.png", "http://127.0.0.1:8080/a.jpg"]:
        assert f.check(url) is None, url


def test_off_by_default_on_in_the_production_preset():
    from flows.config import PipelineConfig
    from lvd.config import load_config

    assert not CrawlConfig().unsafe.enabled
    assert not load_config(PipelineConfig, "cpu-tiny").crawl.unsafe.enabled
    prod = load_config(PipelineConfig, "lvd-142m").crawl.unsafe
    assert prod.enabled and prod.builtin_lists and prod.banned_words


def test_refusals_reach_the_crawl_records_with_their_list(crawl_server, tmp_path, isolated_cache):
    uri = _ut1_archive(tmp_path / "ut1.tar.gz", {"adult": {"domains": "bad-pics.example\n"}})
    page = tmp_path / "page.html"
    page.write_text('<img src="http://cdn.bad-pics.example/a.jpg"><img src="http://img.example.org/bdsm/b.jpg">')
    cfg = crawl_server.crawl_config(unsafe=UnsafeFilterConfig(enabled=True, builtin_lists=False, list_uris=[uri]))
    stage = f"file://{tmp_path}/crawl"
    parts = plan_crawl_parts([str(page)], cfg)
    crawl_part(parts[0], stage, cfg)
    with pytest.raises(RuntimeError, match="no images"):
        finalize_crawl(stage, parts, cfg, "x")
    rows = [r for r in read_table(join(stage, "records.parquet")).to_pylist() if r["kind"] == "image"]
    got = sorted((r["status"], r["reason"], r["detail"]) for r in rows)
    assert got == [(reasons.STATUS_REJECTED, reasons.BANNED_WORD, "bdsm"),
                   (reasons.STATUS_REJECTED, reasons.UNSAFE_DOMAIN, "ut1:adult")]
    # The policy used for every request hop refuses the same way.
    assert UrlPolicy(cfg).refusal("http://cdn.bad-pics.example/a.jpg") == (reasons.UNSAFE_DOMAIN, "ut1:adult")


def test_a_crawl_of_pages_on_the_loopback_web_refuses_listed_pages_and_images(crawl_server, crawl_web, tmp_path,
                                                                             isolated_cache):
    """URL-list input fetched over HTTP: a page on a listed domain is refused before any request, with its
    list and category; a fetched page's images on listed domains or with banned words are refused the same
    way; its other images are crawled."""
    from lvd.demo_web import SHOP

    uri = _ut1_archive(tmp_path / "ut1.tar.gz", {"adult": {"domains": "bad-pics.example\n"},
                                                 "phishing": {"domains": "login-bank.example\n"}})
    good = next(u for u in crawl_web.good_images if u.startswith("http://cdn.example.com/img/") and u.endswith(".jpg"))
    page = crawl_web.root / "sites" / SHOP / "p" / "unsafe-mix.html"
    page.write_text(f'<img src="{good}"><img src="http://img.bad-pics.example/a.jpg">'
                    '<img src="http://cdn.example.com/gallery/bdsm/b.jpg">'
                    '<img src="http://cdn.login-bank.example/logo.png">')
    urls = tmp_path / "pages.txt"
    urls.write_text(f"http://{SHOP}/p/unsafe-mix.html\nhttp://www.bad-pics.example/gallery.html\n"
                    "http://login-bank.example/index.html\n")
    cfg = crawl_server.crawl_config(unsafe=UnsafeFilterConfig(enabled=True, builtin_lists=False, list_uris=[uri]))
    stage = f"file://{tmp_path}/crawl"
    parts = plan_crawl_parts([str(urls)], cfg)
    for part in parts:
        crawl_part(part, stage, cfg)
    commit = finalize_crawl(stage, parts, cfg, "x")
    rows = read_table(join(stage, "records.parquet")).to_pylist()
    got = {(r["kind"], r["url"]): (r["status"], r["reason"], r["detail"]) for r in rows}
    assert got[("page", "http://www.bad-pics.example/gallery.html")] == ("rejected", reasons.UNSAFE_DOMAIN, "ut1:adult")
    assert got[("page", "http://login-bank.example/index.html")] == ("rejected", reasons.UNSAFE_DOMAIN, "ut1:phishing")
    assert got[("page", f"http://{SHOP}/p/unsafe-mix.html")][:2] == ("ok", "")
    assert got[("image", "http://img.bad-pics.example/a.jpg")] == ("rejected", reasons.UNSAFE_DOMAIN, "ut1:adult")
    assert got[("image", "http://cdn.example.com/gallery/bdsm/b.jpg")] == ("rejected", reasons.BANNED_WORD,
                                                                               "bdsm")
    assert got[("image", "http://cdn.login-bank.example/logo.png")] == ("rejected", reasons.UNSAFE_DOMAIN,
                                                                        "ut1:phishing")
    assert got[("image", good)][0] == "ok"
    # Refused URLs were never requested; the commit counts every refusal by reason.
    requested = crawl_server.stats()["paths"]
    assert not any("bad-pics" in p or "login-bank" in p or "bdsm" in p for p in requested)
    assert commit["extra"]["reasons"][reasons.UNSAFE_DOMAIN] == 4
