"""Robots opt-outs written in the page: odd and hostile HTML, the directive policy, and the crawl records."""

import pytest

from lvd.demo_web import SHOP
from storage.tables import read_table
from tasks.crawl import reasons
from tasks.crawl.config import CrawlConfig
from tasks.crawl.html_extract import extract_image_refs
from tasks.crawl.robots import meta_robots_opt_out, x_robots_opt_out
from tasks.crawl.stage import crawl_part, plan_crawl_parts

AGENT = "lvdbot"
BLOCK = CrawlConfig().x_robots_block


def opt_out(html: str, agent: str = AGENT, blocked=BLOCK):
    return meta_robots_opt_out(extract_image_refs(html, "http://x.test/").meta_directives, agent, blocked)


@pytest.mark.parametrize("html, expected", [
    ('<META NAME="ROBOTS" CONTENT="NoAI">', "robots: noai"),
    ("<meta content='noimageai' name=robots>", "robots: noimageai"),  # attributes swapped, quotes mixed
    ('<meta\n\tname = " Robots "\n content="  index ,\n  NOIMAGEINDEX ">', "robots: noimageindex"),
    ('<meta name="robots" content="index, follow"><meta name="robots" content="noai"/>', "robots: noai"),
    ('<meta name="LvdBot" content="noimageai">', "lvdbot: noimageai"),
    ('<meta name="robots" content="lvdbot: noai">', "robots: noai"),  # scoped inside the content
    ('<meta http-equiv="X-Robots-Tag" content="noimageai">', "x-robots-tag: noimageai"),
    ('<meta name="robots" content="none">', "robots: none"),  # none = noindex, nofollow
    ('<meta name="robots" content="noindex">', "robots: noindex"),
    ('<body><p>late <meta name="robots" content="noai"></p></body>', "robots: noai"),
    # Not an opt-out for us: another agent, other meta names, directives that say yes, empty or missing content,
    # a commented-out tag, the words in other attributes or text.
    ('<meta name="otherbot" content="noai"><meta name="robots" content="otherbot: noimageai">', None),
    ('<meta name="description" content="noai noimageai"><meta property="robots" content="noai">', None),
    ('<meta name="robots" content="index, follow, max-image-preview:large">', None),
    ('<meta name="robots" content=""><meta name="robots"><meta content="noai">', None),
    ('<!-- <meta name="robots" content="noai"> --><p>noai</p><img alt="noimageai" src="a.jpg">', None),
    ('<meta name="robots" content="noaix, xnoai, no-ai">', None),
])  # fmt: skip
def test_odd_and_hostile_meta_tags(html, expected):
    assert opt_out(html) == expected


def test_the_directive_policy():
    assert x_robots_opt_out(["none"], AGENT, ["noindex"]) == "none"
    assert x_robots_opt_out(["noai"], AGENT, ["noimageai"]) == "noai"  # noai covers images
    assert x_robots_opt_out(["noimageai"], AGENT, ["noai"]) is None  # not the other way round
    assert x_robots_opt_out(["noindex"], AGENT, ["noai", "noimageai"]) is None  # a configured list is the list
    assert opt_out('<meta name="robots" content="nofollow, noarchive">') is None
    # The agent name is the configured user agent's first token.
    cfg = CrawlConfig(user_agent="LvdBot/2.0 (+https://example.org/bot)")
    assert opt_out('<meta name="lvdbot" content="noai">', cfg.agent_name) == "lvdbot: noai"


def test_a_fetched_page_that_opts_out_is_recorded_and_none_of_its_images_is_requested(crawl_server, crawl_web,
                                                                                     tmp_path):
    good = next(u for u in crawl_web.good_images if u.startswith("http://cdn.example.com/img/") and u.endswith(".jpg"))
    pages = {
        "meta-agent.html": (f'<html><head><meta content="NoImageAI" NAME="LVD-Crawler"></head>'
                            f'<body><img src="{good}?agent"></body></html>', "lvd-crawler: noimageai"),
        "meta-equiv.html": (f'<meta http-equiv="x-robots-tag" content="none"><img src="{good}?equiv">',
                            "x-robots-tag: none"),
        "meta-other.html": (f'<meta name="otherbot" content="noai"><img src="{good}?other">', None),
    }
    for name, (html, _) in pages.items():
        (crawl_web.root / "sites" / SHOP / "p" / name).write_text(html)
    urls = tmp_path / "pages.txt"
    urls.write_text("".join(f"http://{SHOP}/p/{name}\n" for name in pages))
    cfg = crawl_server.crawl_config()
    rows = []
    for part in plan_crawl_parts([str(urls)], cfg):
        rows += read_table(crawl_part(part, f"file://{tmp_path}/crawl", cfg)["records"]).to_pylist()
    got = {r["url"].rsplit("/", 1)[-1]: (r["status"], r["reason"], r["detail"]) for r in rows if r["kind"] == "page"}
    for name, (_, detail) in pages.items():
        want = ("ok", "", "") if detail is None else ("rejected", reasons.META_ROBOTS, detail)
        assert got[name] == want, name
    images = [r["url"] for r in rows if r["kind"] == "image"]
    assert images == [f"{good}?other"]
