"""Screening the same crawl twice gives the same commit digest: the per-step timings are recorded in the
commit's `timings`, which the digest leaves out."""

import json

from storage.commit import COMMIT_FILE, PARTS_DIR, digest_of_commit, read_commit
from storage.uri import join, list_files, read_bytes, remove, write_bytes_atomic
from tasks.safety.config import SafetyConfig
from tasks.safety.stage import finalize_safety, plan_safety_parts, safety_input_digest, safety_part
from tests.safety.pool import make_crawl_stage


def test_safety_timings_stay_out_of_the_digest(tmp_path):
    crawl_uri, out = f"file://{tmp_path}/crawl", f"file://{tmp_path}/safety"
    make_crawl_stage(crawl_uri, [["coffee", "page"]])
    cfg = SafetyConfig(faces={"enabled": False}, workers=0, batch_size=2)
    parts = plan_safety_parts(crawl_uri, cfg)
    for p in parts:
        safety_part(p, out, cfg)
    digest_in = safety_input_digest(crawl_uri, cfg)
    first = finalize_safety(out, parts, cfg, digest_in)
    assert "step_seconds" not in first["extra"] and set(first["timings"]["step_seconds"])
    digest = digest_of_commit(out)
    # the same parts, timed differently (another run of the same data), committed again
    for marker in list_files(join(out, PARTS_DIR), ".json"):
        record = json.loads(read_bytes(marker))
        record["summary"]["step_seconds"] = {k: v + 7.0 for k, v in record["summary"]["step_seconds"].items()}
        write_bytes_atomic(marker, json.dumps(record).encode())
    remove(join(out, COMMIT_FILE))
    second = finalize_safety(out, parts, cfg, digest_in)
    assert second["timings"] != first["timings"]
    assert read_commit(out)["extra"] == first["extra"]
    assert digest_of_commit(out) == digest
