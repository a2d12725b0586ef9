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


def _help_texts() -> dict[str, str]:
    """`lvd --help` and every `lvd COMMAND --help`, as argparse renders them."""
    import argparse

    from lvd.cli import build_parser

    parser = build_parser()
    texts = {"lvd": parser.format_help()}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            texts.update({f"lvd {name}": sub.format_help() for name, sub in action.choices.items()})
    return texts


def test_every_dotted_key_in_the_cli_help_exists_and_its_example_value_is_valid():
    import re

    from flows.config import PipelineConfig
    from lvd.config import load_config

    found = 0
    for where, text in _help_texts().items():
        for key, value in re.findall(r"(?<![\w/.:-])([a-z_]+(?:\.[a-z_0-9]+)+)=(\S+)", " ".join(text.split())):
            if key == "key.path":  # the placeholder of `[key.path=value ...]`
                continue
            found += 1
            item = f"{key}={value.rstrip(',;)')}"
            load_config(PipelineConfig, "cpu-tiny", [item])  # ConfigError names an unknown key or bad value
    assert found >= 5
