"""What a newcomer meets first: help texts with examples, `embedpipe config`, and an ImportError
that names the missing package and what brings it."""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

import pytest

from pipelines.cli import main
from pipelines.config import load_config
from pipelines.help_texts import COMMANDS
from pipelines.import_hints import PACKAGES, import_hint
from tests.pipelines.helpers import README_ENTRYPOINT

ROOT = Path(__file__).resolve().parents[2]


def help_of(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as stopped:
        main([*argv, "--help"])
    assert stopped.value.code == 0
    return str(capsys.readouterr().out)


def test_the_tool_s_help_says_what_it_does_and_what_to_try_first(capsys):
    text = help_of(capsys)
    assert "embeds a corpus of documents into Parquet" in text
    assert "embedpipe run conf/default.yaml" in text and "make run" in text
    assert "Parsing and printing" not in text  # the module's docstring is for developers
    assert re.search(r"exit codes: 0 done; 1 failed", text)


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_each_command_s_help_shows_its_examples_and_where_its_keys_are(capsys, command):
    text = help_of(capsys, command)
    examples = COMMANDS[command].examples.splitlines()
    assert "examples:" in text and examples[0] in text
    assert "exit codes:" in text
    if command in ("run", "plan", "config", "status", "serve"):
        assert re.search(r"README\.md,\s+'", text)  # the section that lists its keys


def test_config_prints_every_key_and_reads_back_as_the_same_config(tmp_path, capsys):
    overrides = ["workers.num_actors=3", "embedding.chunking.tokens=128"]
    assert main(["config", str(ROOT / "conf" / "default.yaml"), *overrides]) == 0
    printed = capsys.readouterr().out
    resolved = tmp_path / "resolved.yaml"
    resolved.write_text(printed)
    assert load_config(resolved) == load_config(ROOT / "conf" / "default.yaml", overrides)
    assert "cpus_per_actor: 2" in printed  # a default the file does not set
    assert "chunking:\n    tokens: 128\n    overlap: 0\n    pool: none" in printed


def test_config_refuses_a_bad_override_like_run(capsys):
    assert main(["config", str(ROOT / "conf" / "default.yaml"), "workers.num_actors=0"]) == 2
    assert "workers.num_actors" in capsys.readouterr().err


def test_a_missing_runtime_package_is_named_with_the_python_that_lacks_it():
    hint = import_hint(ModuleNotFoundError("No module named 'ray'", name="ray"))
    assert "ray[default,serve] is a dependency of embedpipe itself" in hint
    assert sys.executable in hint and "export" not in hint


def test_a_missing_extra_package_names_its_extra():
    hint = import_hint(ModuleNotFoundError("No module named 'torch'", name="torch"))
    assert hint.endswith("torch comes with the export extra: pip install 'embedpipe[export]'")
    plot = import_hint(ModuleNotFoundError("No module named 'matplotlib'", name="matplotlib"))
    assert "pip install 'embedpipe[plot]'" in plot


def test_every_dependency_in_pyproject_has_its_hint():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = {(req, None) for req in project["dependencies"]}
    for extra in ("export", "plot"):
        wanted |= {(req, extra) for req in project["optional-dependencies"][extra]}
    named = {(package, extra) for package, extra in PACKAGES.values()}
    for requirement, extra in wanted:
        package = re.split(r"[<>=!~ ]", requirement)[0]
        assert (package, extra) in named, f"{requirement} ({extra or 'runtime'}) has no hint"


def test_the_readme_s_ray_job_recipe_is_the_one_test_ray_job_submits():
    readme = (ROOT / "README.md").read_text()
    recipe = "ray job submit --address http://HEAD:8265 --working-dir . -- "
    assert recipe + " ".join(README_ENTRYPOINT) + " conf/gte-large.yaml" in readme
    assert "source .venv/bin/activate" in readme and "RAY_AUTH_TOKEN" in readme
