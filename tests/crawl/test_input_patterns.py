"""Crawl inputs named by glob, locally and on S3: expanded when the run plans, so new files join later runs."""
from __future__ import annotations

import pytest

from storage.uri import join, write_bytes_atomic
from tasks.crawl.sources import expand_inputs


def _write(root: str, names: list[str]) -> None:
    for name in names:
        write_bytes_atomic(join(root, name), b"http://127.0.0.1/a.html\n")


@pytest.mark.parametrize("where", ["local", "s3"])
def test_a_glob_expands_to_the_known_files_it_matches_now(where, tmp_path, request):
    root = request.getfixturevalue("s3_root") if where == "s3" else f"file://{tmp_path}"
    _write(root, ["crawl/2026-11/a.txt", "crawl/2026-11/b.warc.gz", "crawl/2026-11/notes.md",
                  "crawl/2026-12/c.txt", "crawl/older/d.txt"])
    found = expand_inputs([join(root, "crawl/2026-*/*"), join(root, "crawl/2026-11/a.txt")])
    assert [(u.removeprefix(root + "/"), k) for u, k in found] == [
        ("crawl/2026-11/a.txt", "urls"), ("crawl/2026-11/b.warc.gz", "warc"), ("crawl/2026-12/c.txt", "urls")]
    deep = expand_inputs([join(root, "crawl/**/*.txt")])
    assert [u.removeprefix(root + "/") for u, _ in deep] == ["crawl/2026-11/a.txt", "crawl/2026-12/c.txt",
                                                             "crawl/older/d.txt"]
    _write(root, ["crawl/2026-12/e.txt"])  # a later run sees the new file
    assert join(root, "crawl/2026-12/e.txt") in [u for u, _ in expand_inputs([join(root, "crawl/2026-*/*.txt")])]
    with pytest.raises(FileNotFoundError, match="matches no .warc"):
        expand_inputs([join(root, "crawl/2026-*/*.md.gz")])
