"""The curation report's crawl table: every rejection reason with its count and meaning."""
from __future__ import annotations

import pytest

import flows.reporting as reporting
from storage.commit import commit_stage
from tasks.crawl import reasons
from tasks.crawl.report import REASONS, describe, reasons_table


def reason_codes() -> list[str]:
    return [v for k, v in vars(reasons).items()
            if k.isupper() and isinstance(v, str) and not k.startswith("STATUS_") and k != "HTTP_STATUS"]


def test_every_reason_code_has_a_kind_and_a_description():
    missing = [code for code in reason_codes() if code not in REASONS]
    assert not missing, missing
    assert len(reason_codes()) >= 21
    for code in reason_codes():
        kind, text = describe(code)
        assert kind in {"rejected", "failed", "ok"} and text and text != "(no description)", code
    assert describe("http_404") == ("failed", describe("http_404")[1]) and "404" in describe("http_404")[1]


@pytest.fixture
def artifacts(monkeypatch):
    made: list[dict] = []
    monkeypatch.setattr(reporting, "create_table_artifact", lambda **kw: made.append(kw))
    monkeypatch.setattr(reporting, "create_markdown_artifact", lambda **kw: made.append(kw))
    return made


def test_curation_report_publishes_the_crawl_reasons_table(tmp_path, artifacts):
    crawl_uri = (tmp_path / "lvd" / "v1" / "crawl").as_uri()
    counted = {"too_small": 7, "http_404": 3, "robots_disallowed": 12, "decode_error": 1}
    commit_stage(crawl_uri, stage="crawl", config_digest="c", input_digest="i",
                 counts={"images": 40, "ok": 17, "rejected": 20, "failed": 3}, extra={"reasons": counted})

    reporting.publish_curation_report("lvd", "v1", {"crawl": {"uri": crawl_uri, "counts": {}}}, cfg=None)

    (table,) = [a for a in artifacts if "crawl-reasons" in a["key"]]
    rows = table["table"]
    assert [r["reason"] for r in rows] == ["robots_disallowed", "too_small", "http_404", "decode_error"]
    assert {r["reason"]: r["count"] for r in rows} == counted
    assert all(r["description"] and r["kind"] for r in rows)
    assert "20 rejected" in table["description"] and "3 failed" in table["description"]
    assert rows == reasons_table(counted)


# --- the report's pictures -------------------------------------------------------------------------------

def _pixels(png: bytes):
    import io

    import numpy as np
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def _jpeg() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (40, 30), (200, 30, 30)).save(buf, "JPEG")
    return buf.getvalue()


def test_histogram_count_axis_has_distinct_integer_ticks():
    from tasks.retrieve.report import count_ticks

    assert count_ticks(2) == [0, 1, 2]
    for peak in (1, 2, 3, 4, 5, 7, 9, 13, 99, 1000, 12345):
        ticks = count_ticks(peak)
        assert len(set(ticks)) == len(ticks) <= 5 and ticks[0] == 0 and ticks[-1] >= peak, (peak, ticks)
        assert all(isinstance(t, int) for t in ticks)


def test_histogram_bins_of_integer_sizes_are_integer_with_distinct_labels():
    import numpy as np

    from tasks.retrieve.report import bin_label, cluster_size_histogram_png, size_bins

    edges, counts = size_bins(np.array([1, 2, 2, 0]))
    assert edges.tolist() == [1, 2, 3] and counts.tolist() == [1, 2]
    rng = np.random.default_rng(0)
    for sizes in (rng.integers(1, 5, 50), rng.integers(1, 20_000, 500), np.array([7, 7, 7])):
        edges, counts = size_bins(sizes)
        labels = [bin_label(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:])]
        assert edges.dtype.kind == "i" and len(set(labels)) == len(labels)
        assert counts.sum() == (sizes > 0).sum()
        assert _pixels(cluster_size_histogram_png(sizes)).shape[1] == 640


@pytest.mark.parametrize("sheet", ["retrieve", "dedup"])
def test_contact_sheet_labels_are_not_cut(sheet):
    """Two labels that differ only at their end must draw differently (a cut label draws the same)."""
    import io

    from PIL import Image

    if sheet == "retrieve":
        from tasks.retrieve.report import contact_sheet_png

        images = [_jpeg()] * 3
    else:
        from tasks.dedup.report import contact_sheet_png

        images = [Image.open(io.BytesIO(_jpeg()))] * 3
    a = _pixels(contact_sheet_png([("duplicate_of_previous_version (n=12)", images)]))
    b = _pixels(contact_sheet_png([("duplicate_of_previous_version (n=13)", images)]))
    assert a.shape == b.shape and (a != b).any()
    long = "s3://bucket/queries/imagenet/train/n01440764/n01440764_10026.JPEG (first of 12 neighbours)"
    c = _pixels(contact_sheet_png([(long, images)]))
    d = _pixels(contact_sheet_png([(long[:-1] + "!", images)]))
    assert (c != d).any() and c.shape[0] > 64


def test_wrapped_label_keeps_every_character():
    from PIL import Image, ImageDraw

    from tasks.pictures import wrap_label

    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    for text in ("cluster 12 (3)", "s3://bucket/very/long/path/query-000123.jpg", "x" * 80, ""):
        lines = wrap_label(draw, text, 90)
        assert "".join(lines).replace(" ", "") == text.replace(" ", "")
        assert all(draw.textlength(line) <= 90 for line in lines)
