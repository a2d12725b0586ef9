"""The crawl spool hands pictures back in key order, whatever order they arrived in."""

import pytest

from tasks.crawl.spool import SampleSpool


def test_samples_come_back_sorted_by_key_with_their_bytes(tmp_path, monkeypatch):
    monkeypatch.setenv("LVD_SPOOL_DIR", str(tmp_path))
    arrivals = [("000001-0000003", b"c" * 3000), ("000001-0000001", b"a"), ("000001-0000002", b"")]
    with SampleSpool() as spool:
        for key, data in arrivals:
            spool.add(key, data, {"key": key, "size": len(data)})
        assert len(spool) == 3
        out = list(spool.in_key_order())
    assert [k for k, _, _ in out] == sorted(k for k, _ in arrivals)
    assert {k: (d, m["size"]) for k, d, m in out} == {k: (d, len(d)) for k, d in arrivals}


def test_a_key_added_twice_is_refused():
    with SampleSpool() as spool:
        spool.add("k1", b"x", {})
        with pytest.raises(ValueError, match="'k1' added twice"):
            spool.add("k1", b"y", {})
