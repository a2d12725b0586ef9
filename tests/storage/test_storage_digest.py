"""A commit's digest says what the stage holds: timings (and when / by which build it was written) never
change it, so rerunning the same data does not churn the digests downstream or `latest`."""

import json

from storage.commit import COMMIT_FILE, commit_stage, digest_of_commit, read_commit, stage_uri
from storage.uri import join, write_bytes_atomic


def test_commits_differing_only_in_timings_have_the_same_digest(tmp_path, monkeypatch):
    uri = stage_uri(f"file://{tmp_path}", "lvd", "v1", "safety")
    write_bytes_atomic(join(uri, "decisions.parquet"), b"rows")
    first = commit_stage(uri, stage="safety", config_digest="c", input_digest="i", counts={"kept": 3},
                         extra={"models": {"nsfw": ["builtin:open-nsfw", "abc"]}},
                         timings={"step_seconds": {"decode": 0.5, "nsfw": 1.25}, "kmeans_seconds": 2.0})
    digest = digest_of_commit(uri)
    monkeypatch.setenv("LVD_CODE_VERSION", "other-build")
    second = commit_stage(uri, stage="safety", config_digest="c", input_digest="i", counts={"kept": 3},
                          extra={"models": {"nsfw": ["builtin:open-nsfw", "abc"]}},
                          timings={"step_seconds": {"decode": 9.0, "nsfw": 0.1}, "queries_per_second": 123.4})
    assert first["timings"] != second["timings"] and read_commit(uri)["timings"] == second["timings"]
    assert digest_of_commit(uri) == digest
    # what the stage holds still counts
    commit_stage(uri, stage="safety", config_digest="c", input_digest="i", counts={"kept": 4},
                 extra={"models": {"nsfw": ["builtin:open-nsfw", "abc"]}}, timings=first["timings"])
    assert digest_of_commit(uri) != digest


def test_a_commit_without_timings_keeps_its_digest(tmp_path):
    """Records written before `timings` existed digest as they always did."""
    uri = stage_uri(f"file://{tmp_path}", "lvd", "v1", "crawl")
    record = commit_stage(uri, stage="crawl", config_digest="c", input_digest="i", counts={"samples": 1})
    assert record["timings"] == {}
    digest = digest_of_commit(uri)
    old = {k: v for k, v in record.items() if k != "timings"}
    write_bytes_atomic(join(uri, COMMIT_FILE), json.dumps(old).encode())
    assert digest_of_commit(uri) == digest
