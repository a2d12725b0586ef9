"""Dotted overrides and error messages of the typed configuration loader."""
from typing import Literal

import pytest
from pydantic import BaseModel, ConfigDict, Field

from lvd.config import ConfigError, apply_overrides, load_config, validate


class Inner(BaseModel):
    model_config = ConfigDict(extra="forbid")
    concurrency: int = Field(16, ge=1)
    mode: Literal["fast", "safe"] = "safe"
    hosts: list[str] = []


class Outer(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = "demo"
    crawl: Inner = Inner()


def test_override_sets_nested_values_with_yaml_types():
    data = apply_overrides(Outer, {}, ["crawl.concurrency=64", "crawl.hosts=[a, b]", "name=x"])
    cfg = validate(Outer, data)
    assert cfg.crawl.concurrency == 64 and cfg.crawl.hosts == ["a", "b"] and cfg.name == "x"


def test_override_keeps_sibling_values_from_the_file():
    data = apply_overrides(Outer, {"crawl": {"mode": "fast"}}, ["crawl.concurrency=2"])
    cfg = validate(Outer, data)
    assert cfg.crawl.mode == "fast" and cfg.crawl.concurrency == 2


def test_unknown_key_names_key_and_allowed_keys():
    with pytest.raises(ConfigError) as err:
        apply_overrides(Outer, {}, ["crawl.concurency=64"])
    assert "crawl.concurency" in str(err.value) and "concurrency" in str(err.value)


def test_override_into_a_scalar_is_refused():
    with pytest.raises(ConfigError, match="not a section"):
        apply_overrides(Outer, {}, ["name.first=x"])


def test_bad_value_names_the_field_and_the_bound():
    with pytest.raises(ConfigError) as err:
        validate(Outer, {"crawl": {"concurrency": 0}})
    text = str(err.value)
    assert "crawl.concurrency" in text and "greater than or equal to 1" in text


def test_bad_choice_lists_allowed_values():
    with pytest.raises(ConfigError) as err:
        validate(Outer, {"crawl": {"mode": "turbo"}})
    assert "'fast'" in str(err.value) and "'safe'" in str(err.value)


def test_unknown_key_in_file_is_an_error(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("crawl:\n  threads: 3\n")
    with pytest.raises(ConfigError, match="crawl.threads: unknown key"):
        load_config(Outer, path)


def test_malformed_override_and_missing_file():
    with pytest.raises(ConfigError, match="key.path=value"):
        apply_overrides(Outer, {}, ["crawl.concurrency"])
    with pytest.raises(ConfigError, match="not found"):
        load_config(Outer, "/nonexistent/x.yaml")
    with pytest.raises(ConfigError, match="unknown preset"):
        load_config(Outer, "no-such-preset")


def test_every_invalid_field_is_listed_not_only_the_first():
    with pytest.raises(ConfigError) as err:
        validate(Outer, {"name": 3, "crawl": {"concurrency": 0, "mode": "turbo", "threads": 2}})
    text = str(err.value)
    for loc in ("name:", "crawl.concurrency:", "crawl.mode:", "crawl.threads: unknown key"):
        assert loc in text, text


def test_every_bad_override_and_bad_value_is_listed_together(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("crawl:\n  mode: turbo\n")
    with pytest.raises(ConfigError) as err:
        load_config(Outer, path, ["crawl.concurency=64", "name.first=x", "crawl.concurrency=0", "nokey"])
    text = str(err.value)
    for part in ("'crawl.concurency'", "not a section", "crawl.concurrency: Input should be greater than or equal",
                 "crawl.mode:", "'nokey' must look like key.path=value"):
        assert part in text, text


def test_apply_overrides_alone_names_every_unknown_key():
    with pytest.raises(ConfigError) as err:
        apply_overrides(Outer, {}, ["crawl.concurency=64", "nmae=x"])
    assert "'crawl.concurency'" in str(err.value) and "'nmae'" in str(err.value)


def test_one_loader_reads_a_presets_train_section_with_the_same_override_rules(tmp_path):
    """The training entry point (torchrun) and the CLI parse a preset and its overrides alike."""
    import pytest

    from lvd.config import ConfigError, load_config
    from tasks.train.config import TrainConfig
    from tasks.train.entry import read_config

    cfg = read_config("configs/cpu-tiny.yaml", ["train.optim.total_steps=7", "model.arch=vit_tiny"])
    assert (cfg.optim.total_steps, cfg.model.arch) == (7, "vit_tiny")
    assert cfg == load_config(TrainConfig, "cpu-tiny", ["optim.total_steps=7", "train.model.arch=vit_tiny"],
                              section="train")
    with pytest.raises(ConfigError) as err:
        read_config("configs/cpu-tiny.yaml", ["optim.total_step=7", "optim.base_lr=-1"])
    assert "unknown key 'optim.total_step'" in str(err.value) and "optim.base_lr" in str(err.value)
