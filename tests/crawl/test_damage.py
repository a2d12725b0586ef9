"""Damaged WARCs, oversized pages and in-page robots opt-outs all reach the crawl records with a reason."""

import asyncio
import gzip
import io

from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from storage.tables import read_table
from tasks.crawl import reasons
from lvd.demo_web import SHOP
from tasks.crawl.fetch import Fetcher
from tasks.crawl.html_extract import extract_image_refs
from tasks.crawl.robots import meta_robots_opt_out
from tasks.crawl.sources import iter_warc_pages
from tasks.crawl.stage import crawl_part, plan_crawl_parts


def _warc(n=8):
    out, offsets = io.BytesIO(), []
    writer = WARCWriter(out, gzip=True)
    for i in range(n):
        offsets.append(out.tell())
        body = (f"<html><body><img src='/a{i}.jpg'>" + f"page {i} " * 150 + "</body></html>").encode()
        http = StatusAndHeaders("200 OK", [("Content-Type", "text/html")], protocol="HTTP/1.1")
        writer.write_record(writer.create_warc_record(f"http://x.test/p{i}.html", "response",
                                                      payload=io.BytesIO(body), http_headers=http))
    return out.getvalue(), offsets


def _pages(tmp_path, data, name="w.warc.gz"):
    path = tmp_path / name
    path.write_bytes(data)
    return list(iter_warc_pages(str(path), 100_000))


def test_a_cut_warc_records_the_cut_record_with_its_offset(tmp_path):
    data, offsets = _warc()
    pages = _pages(tmp_path, data[: offsets[3] + 60])
    assert [p.url for p in pages if p.error is None] == [f"http://x.test/p{i}.html" for i in range(3)]
    (bad,) = [p for p in pages if p.error]
    assert bad.error[0] == reasons.WARC_ERROR and f"offset {offsets[3]}" in bad.error[1]
    plain = gzip.decompress(data)
    cut = _pages(tmp_path, plain[:5000], "w.warc")
    assert sum(p.error is not None for p in cut) == 1


def test_a_corrupt_gzip_member_costs_one_record_not_the_rest(tmp_path):
    data, offsets = _warc()
    bad = bytearray(data)
    bad[offsets[2] + 40 : offsets[2] + 60] = b"\x00" * 20
    pages = _pages(tmp_path, bytes(bad))
    errors = [p for p in pages if p.error]
    assert len(errors) == 1 and f"offset {offsets[2]}" in errors[0].error[1]
    assert [p.url for p in pages if p.error is None] == [f"http://x.test/p{i}.html" for i in (0, 1, 3, 4, 5, 6, 7)]


def test_meta_robots_opt_out():
    page = extract_image_refs('<meta name="robots" content="index, noimageai"><img src="a.jpg">', "http://x.test/")
    assert meta_robots_opt_out(page.meta_directives, "lvd-crawler", ["noai", "noimageai"]) == "robots: noimageai"
    mine = extract_image_refs('<meta name="LVD-Crawler" content="noai">', "http://x.test/")
    other = extract_image_refs('<meta name="otherbot" content="noai"><meta name="description" content="noai">',
                               "http://x.test/")
    assert meta_robots_opt_out(mine.meta_directives, "lvd-crawler", ["noai"]) == "lvd-crawler: noai"
    assert meta_robots_opt_out(other.meta_directives, "lvd-crawler", ["noai"]) is None


def test_opted_out_and_oversized_html_files_are_recorded(crawl_server, tmp_path):
    (tmp_path / "optout.html").write_text('<meta name="robots" content="noimageindex"><img src="http://x.test/a.jpg">')
    (tmp_path / "big.html").write_text('<img src="http://ads.example.org/a.jpg">' + "x" * 3000)
    cfg = crawl_server.crawl_config(max_page_bytes=1000)
    part = plan_crawl_parts([str(tmp_path / "optout.html"), str(tmp_path / "big.html")], cfg)[0]
    rows = read_table(crawl_part(part, f"file://{tmp_path}/crawl", cfg)["records"]).to_pylist()
    pages = {r["url"].rsplit("/", 1)[-1]: r for r in rows if r["kind"] == "page"}
    assert (pages["optout.html"]["status"], pages["optout.html"]["reason"]) == ("rejected", reasons.META_ROBOTS)
    assert (pages["big.html"]["status"], pages["big.html"]["reason"]) == ("ok", reasons.PAGE_TRUNCATED)
    assert [r["page"].rsplit("/", 1)[-1] for r in rows if r["kind"] == "image"] == ["big.html"]


def test_a_fetched_page_over_the_cap_is_marked_truncated(crawl_server):
    cfg = crawl_server.crawl_config(max_page_bytes=1000)

    async def go():
        async with Fetcher(cfg) as fetcher:
            return await fetcher.fetch(f"http://{SHOP}/p/hostile.html", accept="html")

    res = asyncio.run(go())
    assert res.ok and res.truncated and len(res.body) == 1000
