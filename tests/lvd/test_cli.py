"""The `lvd` command line: clear messages for missing stages, bad config and uncommitted data."""
import subprocess
import sys

from lvd.cli import FLOW_COMMANDS, main


def test_info_on_uncommitted_stage_is_a_clear_error(tmp_path, capsys):
    assert main(["info", f"file://{tmp_path}/lvd/v1/crawl"]) == 2
    err = capsys.readouterr().err
    assert "crawl" in err and "_COMMITTED.json" in err


def test_bad_override_names_the_key(capsys):
    assert main(["curate", "--config", "cpu-tiny", "crawl.max_concurency=3"]) == 2
    assert "crawl.max_concurency" in capsys.readouterr().err


def test_bad_value_names_the_field(capsys):
    assert main(["curate", "--config", "cpu-tiny", "crawl.max_per_host=0"]) == 2
    assert "crawl.max_per_host" in capsys.readouterr().err


def test_every_flow_command_runs_or_says_it_is_not_available():
    import importlib

    for command, (module, attr) in FLOW_COMMANDS.items():
        try:
            runner = getattr(importlib.import_module(module), attr)
        except ModuleNotFoundError:
            out = subprocess.run([sys.executable, "-m", "lvd.cli", command], capture_output=True, text=True)
            assert out.returncode != 0 and "not available" in out.stderr
        else:
            assert callable(runner)


def test_info_prints_counts_and_config(tmp_path, capsys):
    from storage.commit import commit_stage
    from storage.uri import join, write_bytes_atomic

    uri = f"file://{tmp_path}/lvd/v1/crawl"
    write_bytes_atomic(join(uri, "config.json"), b'{"max_side": 512}')
    commit_stage(uri, stage="crawl", config_digest="c" * 64, input_digest="i" * 64, counts={"samples": 7})
    assert main(["info", uri]) == 0
    out = capsys.readouterr().out
    assert "samples" in out and "7" in out and "max_side" in out and "i" * 64 in out
