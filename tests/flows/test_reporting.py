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
