"""The demo web's pages split over several WARC files (as a crawl archive publishes them)."""
import pytest

from tasks.crawl.sources import iter_warc_pages


def test_a_warc_of_some_pages_holds_exactly_those_pages_and_their_bodies(crawl_web, tmp_path):
    chosen = [crawl_web.pages[3], crawl_web.pages[1]]
    warc = crawl_web.write_warc(tmp_path / "part.warc.gz", chosen)
    pages = list(iter_warc_pages(str(warc), max_page_bytes=10**7))
    assert [p.url for p in pages] == chosen and all(p.error is None for p in pages)
    bodies = dict(zip(crawl_web.pages, crawl_web.html_files))
    assert [p.body for p in pages] == [bodies[u].read_bytes() for u in chosen]


def test_a_url_that_is_not_a_page_of_the_web_is_refused(crawl_web, tmp_path):
    with pytest.raises(ValueError, match="not pages of the demo web"):
        crawl_web.write_warc(tmp_path / "bad.warc.gz", [crawl_web.pages[0], "http://elsewhere.example/x.html"])
    assert not (tmp_path / "bad.warc.gz").exists()
