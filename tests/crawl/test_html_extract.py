import random

from tasks.crawl.html_extract import decode_html, extract_image_refs, largest_candidate, parse_srcset


def test_srcset_with_commas_in_urls_and_descriptors():
    cands = parse_srcset("a.jpg 320w, https://x.com/c_fill,w_100/b.jpg 1280w,d.jpg 2x ,e.jpg")
    assert [c.url for c in cands] == ["a.jpg", "https://x.com/c_fill,w_100/b.jpg", "d.jpg", "e.jpg"]
    assert largest_candidate(cands).url == "https://x.com/c_fill,w_100/b.jpg"
    assert largest_candidate(parse_srcset("s.jpg 1x, m.jpg 1.5x, l.jpg 3x")).url == "l.jpg"
    assert parse_srcset("  ,,, ") == []


PAGE = """<html><head><base href="http://cdn.x.com/s/"><base href="http://ignored.com/"></head><body>
<img src=a.jpg srcset="a-1.jpg 1x, a-2.jpg 2x">
<img data-src="lazy.jpg" src="data:image/gif;base64,R0">
<picture><source srcset="p.webp 100w, p2.webp 900w"><img src=p.jpg></picture>
<source srcset="video-poster.jpg">
<IMG SRC="UPPER.JPG">
</body></html>"""


def test_largest_mode_one_url_per_element_and_base_href():
    page = extract_image_refs(PAGE, "http://p.com/page")
    assert page.base_url == "http://cdn.x.com/s/"  # the first <base> wins, as in browsers
    assert page.refs == ["a-2.jpg", "lazy.jpg", "p2.webp", "p.jpg", "UPPER.JPG"]


def test_all_mode_takes_every_candidate():
    refs = extract_image_refs(PAGE, "http://p.com/page", "all").refs
    assert refs == ["a.jpg", "a-1.jpg", "a-2.jpg", "lazy.jpg", "data:image/gif;base64,R0", "p.webp", "p2.webp",
                    "p.jpg", "UPPER.JPG"]


def test_local_file_uses_canonical_link_when_no_base():
    html = '<link rel="canonical" href="https://site.com/a/page.html"><img src="pic.jpg">'
    assert extract_image_refs(html, "file:///tmp/page.html").base_url == "https://site.com/a/page.html"


def test_hostile_html_never_raises():
    rng = random.Random(7)
    junk = [
        bytes(rng.getrandbits(8) for _ in range(200_000)).decode("latin-1"),
        "<img src='" + "a" * 3_000_000 + "'>",
        "<img src=x.jpg" + "<div>" * 50_000,
        "<!DOCTYPE <![CDATA[ <img src=1.jpg> <!-- never closed",
        "<picture>" * 10_000 + "<source srcset='z.jpg'>",
        "<img src=\x00\x01.jpg><img srcset='\udcff 2x'>",
        "<svg><img src=in-svg.jpg></svg><![if gte IE 9]><img src=cond.jpg><![endif]>",
        "</picture></picture><source srcset='outside.jpg'><img src=ok.jpg>",
    ]
    for doc in junk:
        extract_image_refs(doc, "http://p.com/")
    assert extract_image_refs(junk[-1], "http://p.com/").refs == ["ok.jpg"]
    assert len(extract_image_refs(junk[1], "http://p.com/").refs[0]) == 3_000_000


def test_decode_html_charsets():
    assert decode_html("caf\u00e9".encode("latin-1"), "text/html; charset=ISO-8859-1") == "caf\u00e9"
    assert decode_html(b'<meta charset="windows-1252">\x93q\x94') == '<meta charset="windows-1252">\u201cq\u201d'
    assert decode_html(b"\xff\xfe bad", "text/html; charset=no-such-codec").endswith("bad")
