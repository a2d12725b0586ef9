import pytest

from tasks.crawl.urls import InvalidURL, normalise_url, origin, resolve_url


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("HTTP://Example.COM:80/a/./b/../c", "http://example.com/a/c"),
        ("https://example.com:443", "https://example.com/"),
        ("https://example.com:8443/x#frag", "https://example.com:8443/x"),
        ("http://example.com/%7euser/%2f%zz", "http://example.com/~user/%2F%25zz"),
        ("http://example.com/a b?q=1 2&r=%41", "http://example.com/a%20b?q=1%202&r=A"),
        ("http://example.com/caf\u00e9.jpg", "http://example.com/caf%C3%A9.jpg"),
        ("http://b\u00fccher.example/x", "http://xn--bcher-kva.example/x"),
        ("  http://example.com/x\n.jpg\t ", "http://example.com/x.jpg"),
        ("http://[::1]:8080/x", "http://[::1]:8080/x"),
        ("http://example.com./x", "http://example.com/x"),
        ("DATA:image/png;base64,AAA", "data:image/png;base64,AAA"),
    ],
)
def test_normalise(raw, expected):
    assert normalise_url(raw) == expected


def test_spellings_of_one_url_collapse():
    spellings = [
        "http://EXAMPLE.com/img/a.jpg",
        "http://example.com:80/img/./a.jpg",
        "http://example.com/x/../img/a.jpg#top",
        "http://example.com/img/%61.jpg",
    ]
    assert {normalise_url(s) for s in spellings} == {"http://example.com/img/a.jpg"}


@pytest.mark.parametrize("bad", ["", "relative/path.jpg", "http://[bad-host/x", "http://exa mple.com/", "http:///x"])
def test_invalid(bad):
    with pytest.raises(InvalidURL):
        normalise_url(bad)


def test_resolve_against_base():
    assert resolve_url("http://a.com/x/y.html", "../img/1.jpg") == "http://a.com/img/1.jpg"
    assert resolve_url("https://a.com/x/", "//cdn.b.com/i.png") == "https://cdn.b.com/i.png"
    assert resolve_url("http://a.com/x/", "/root.png?v=2") == "http://a.com/root.png?v=2"
    assert origin("http://a.com:8080/x?y") == "http://a.com:8080"
