"""The embedder: prepare (tokenize) -> run (ONNX) -> finish (normalize), as one small API.

`Embedder.load(dir).embed(texts, options)` gives float32 vectors in input order with, per text,
the tokens embedded, whether it was truncated, and for a text that could not be embedded the
reason (its vector row is NaN, so it cannot be used by mistake). Batches are cut by a padded-
token budget over length-sorted texts and shaped so that, on the CPU provider, a text's vector
does not depend on the budget, its batch mates or the order of the input, to the last bit (on
CUDA and with workers.runtime openvino, to float rounding: their kernels are chosen by batch
shape; int8 exports too, which quantize each batch as a whole). `embed` may be called from
several threads: only the session run is serialized, so one call's tokenizing overlaps
another's inference. On the CPU, `parallel_batches` runs as many batches at once as it has
threads, each single-threaded: the same vectors, to the last bit, in less time. A long call
is itself a pipeline: its texts are tokenized in chunks (small first, then growing), the next
chunk on a helper thread while the current one's batches run, so the device starts on a
20,000-text task after 256 texts are tokenized, not all of them. Vectors do
not change: batches are sorted and cut within a chunk, and a text's vector does not depend on
its batch mates.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from workers.batching import MIN_ROWS, pad_batch, plan_batches, plan_least_cost
from workers.canary import check_canary
from workers.cpu_features import cpu_flags, int8_saturation_warning
from workers.embeddings import Embeddings
from workers.errors import DeviceError, DeviceOutOfMemory
from workers.finish import l2_normalize
from workers.model_dir import MODEL_FILE, TOKENIZER_FILE, ModelCard, check_files, read_card
from workers.openvino_session import COMPUTE_DTYPE, OpenVinoSession
from workers.options import EmbedOptions
from workers.prepare import Prepared, TextPreparer
from workers.session import OnnxSession, Session, resolve_device

log = logging.getLogger(__name__)

DEFAULT_MAX_BATCH_TOKENS = 2048
# Texts tokenized ahead of the device: the first chunk is small so the device starts early, and
# each next one doubles up to the cap, which keeps batches well sorted (9% padding on the stdlib
# corpus at 4,096, as for a whole task) and the memory of prepared ids bounded.
FIRST_CHUNK = 256
MAX_CHUNK = 4096


@dataclass
class Ran:
    """What one call's batches gave: vectors (NaN where not embedded), seconds on the device,
    texts rejected because they did not fit the device even alone, and out-of-memory splits."""

    vectors: np.ndarray
    device_s: float = 0.0
    errors: dict[int, str] = field(default_factory=dict)
    splits: int = 0


class Embedder:
    def __init__(
        self,
        card: ModelCard,
        preparer: TextPreparer,
        session: Session,
        max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS,
        batch_invariant: bool = True,
        lanes: int = 1,
    ) -> None:
        if max_batch_tokens < 1:
            raise ValueError(f"max_batch_tokens must be at least 1, got {max_batch_tokens}")
        if lanes < 1:
            raise ValueError(f"lanes must be at least 1, got {lanes}")
        self.card = card
        self.preparer = preparer
        self.session = session
        self.max_batch_tokens = max_batch_tokens
        # A text's vector independent of its batch mates (see batching.py), at the price of
        # running a lone text twice; a server answering one text at a time may waive it.
        self._min_rows = MIN_ROWS if batch_invariant else 1
        # One batch on the device at a time: callers on other threads tokenize, pad and write
        # meanwhile, without two inferences fighting over the same cores or GPU. With lanes (a
        # single-threaded CPU session), that many batches at once, one per core.
        self._device = threading.BoundedSemaphore(lanes)
        self._lanes = lanes
        self._pool = ThreadPoolExecutor(lanes, thread_name_prefix="lane") if lanes > 1 else None
        self._tally = threading.Lock()  # lanes add to one call's Ran at once

    @property
    def compute_dtype(self) -> str:
        """What the vectors are computed in: the card's dtype, or bf16 under openvino-bf16."""
        return COMPUTE_DTYPE.get(self.session.runtime, self.card.dtype)

    @property
    def lanes(self) -> int:
        """Batches this embedder runs at once (parallel_batches on the CPU), else 1."""
        return self._lanes

    @classmethod
    def load(
        cls,
        model_dir: str | Path,
        *,
        device: str = "cpu",
        threads: int | None = None,
        max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS,
        verify_checksum: bool = True,
        spin: bool = True,
        batch_invariant: bool = True,
        canary: bool = True,
        parallel_batches: bool = False,
        runtime: str = "onnxruntime",
    ) -> Embedder:
        """canary: embed the card's probe texts on this device and refuse to load when they
        differ from the reference (workers/canary.py); off only where parity is measured next.
        parallel_batches: on the CPU, run `threads` batches at once on a single-threaded session
        instead of one batch at a time on `threads` threads; for throughput (a batch job), not
        for the latency of one small request. runtime: onnxruntime, or on the CPU with an fp32
        export openvino / openvino-bf16 (workers/openvino_session.py)."""
        root = Path(model_dir)
        card = read_card(root)
        check_files(root, card, verify_checksum)
        preparer = TextPreparer.from_file(root / TOKENIZER_FILE, card)
        lanes = cpu_lanes(device, threads) if parallel_batches else 1
        session: Session
        if runtime == "onnxruntime":
            session = OnnxSession(
                root / MODEL_FILE,
                device=device,
                threads=1 if lanes > 1 else threads,
                exact_fp32=card.dtype == "fp32",
                spin=spin,
                attention=card.attention,
            )
        else:
            check_openvino_fits(root, card, device, runtime)
            session = OpenVinoSession(root / MODEL_FILE, runtime, threads, lanes)
        embedder = cls(card, preparer, session, max_batch_tokens, batch_invariant, lanes)
        if session.device == "cpu" and (warning := int8_saturation_warning(card, cpu_flags)):
            log.warning("%s: %s", root, warning)
        if session.device == "cuda":
            embedder.warm_up()
        if canary:
            check_canary(embedder, str(root))
        return embedder

    def embed(self, texts: Sequence[object], options: EmbedOptions | None = None) -> Embeddings:
        options = options or EmbedOptions()
        spans = list(chunk_spans(len(texts)))
        if len(spans) <= 1:
            parts = [self._embed_prepared(*self._prepare(texts, options))]
        else:
            parts = self._embed_pipelined(texts, spans, options)
        vectors = np.concatenate([p.vectors for p in parts])
        if options.normalize:
            vectors = l2_normalize(vectors)
        return Embeddings(
            vectors,
            np.concatenate([p.n_tokens for p in parts]),
            np.concatenate([p.truncated for p in parts]),
            tuple(e for p in parts for e in p.errors),
            sum(p.device_s for p in parts),
            sum(p.oom_splits for p in parts),
            sum(p.tokenize_s for p in parts),
        )

    def _embed_pipelined(
        self, texts: Sequence[object], spans: list[tuple[int, int]], options: EmbedOptions
    ) -> list[Embeddings]:
        """Chunk k's batches run while chunk k+1 is tokenized on a helper thread (the tokenizer
        and the session both release the GIL)."""
        parts = []
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="tokenize") as ahead:
            start, stop = spans[0]
            pending = ahead.submit(self._prepare, texts[start:stop], options)
            for k in range(len(spans)):
                prepared, seconds = pending.result()
                if k + 1 < len(spans):
                    start, stop = spans[k + 1]
                    pending = ahead.submit(self._prepare, texts[start:stop], options)
                parts.append(self._embed_prepared(prepared, seconds))
        return parts

    def _prepare(self, texts: Sequence[object], options: EmbedOptions) -> tuple[Prepared, float]:
        clock = time.perf_counter()
        prepared = self.preparer.prepare(texts, options)
        return prepared, time.perf_counter() - clock

    def _embed_prepared(self, prepared: Prepared, tokenize_s: float) -> Embeddings:
        ran = self.run(prepared)
        errors = tuple(ran.errors.get(i, e) for i, e in enumerate(prepared.errors))
        return Embeddings(
            ran.vectors,
            prepared.n_tokens,
            prepared.truncated,
            errors,
            ran.device_s,
            ran.splits,
            tokenize_s,
        )

    def warm_up(self) -> list[tuple[int, int]]:
        """Runs one batch per length bucket up to max_seq_length, as many rows as the budget
        allows, so the device's kernels are chosen and its memory arena sized before the first
        real batch; returns the (rows, length) shapes it ran."""
        shapes = []
        length = 16
        while True:
            length = min(length, self.card.max_seq_length)
            rows = max(1, self.max_batch_tokens // length)
            ids = np.full((rows, length), self.preparer.pad_id, dtype=np.int64)
            with self._device:
                self.session.run(ids, np.ones_like(ids))
            shapes.append((rows, length))
            if length == self.card.max_seq_length:
                return shapes
            length *= 2

    def run(self, prepared: Prepared) -> Ran:
        """Pooled vectors in input order (NaN rows where the text was rejected), the seconds
        spent holding the device, and what running out of device memory cost."""
        ran = Ran(np.full((len(prepared.ids), self.card.dim), np.nan, dtype=np.float32))
        live = np.array([i for i, e in enumerate(prepared.errors) if e is None], dtype=np.int64)
        if len(live) == 0:
            return ran
        lengths = np.array([len(prepared.ids[i]) for i in live])
        batches = [live[b] for b in self.plan(lengths)]
        if self._pool is None:
            for rows in batches:
                self._run_rows(prepared, rows, ran)
        else:  # longest first, so the lanes end close together
            for _ in self._pool.map(lambda rows: self._run_rows(prepared, rows, ran), batches):
                pass
        return ran

    def plan(self, lengths: np.ndarray) -> list[np.ndarray]:
        """Batches of the texts of these token counts: on the CPU those of least padded compute,
        elsewhere greedy under the budget (workers/batching.py says why)."""
        if self.session.device == "cpu":
            return plan_least_cost(lengths, self.max_batch_tokens, self._min_rows)
        return plan_batches(lengths, self.max_batch_tokens)

    def _run_rows(self, prepared: Prepared, rows: np.ndarray, ran: Ran) -> None:
        """One batch on the device; on out-of-memory, the budget comes down to half this batch
        for the rest of the embedder's life and the batch runs again in two halves, down to one
        text, which becomes a reject if even it does not fit."""
        input_ids, mask = pad_batch(
            [prepared.ids[i] for i in rows], self.preparer.pad_id, min_rows=self._min_rows
        )
        try:
            with self._device:
                clock = time.perf_counter()
                ran.vectors[rows] = self.session.run(input_ids, mask)[: len(rows)]
                held = time.perf_counter() - clock
            with self._tally:  # a lane is a 1/lanes share of the device
                ran.device_s += held / self._lanes
        except DeviceOutOfMemory as err:
            if len(rows) == 1:
                ran.errors[int(rows[0])] = (
                    f"text of {len(prepared.ids[rows[0]])} tokens does not fit the device's "
                    "memory even alone; set a lower max_seq_length or embed it on a larger device"
                )
                log.warning("%s; rejected its one text", err)
                return
            self._lower_budget(input_ids.size, err)
            with self._tally:
                ran.splits += 1
            half = len(rows) // 2
            self._run_rows(prepared, rows[:half], ran)
            self._run_rows(prepared, rows[half:], ran)

    def _lower_budget(self, batch_tokens: int, err: DeviceOutOfMemory) -> None:
        lowered = max(1, min(self.max_batch_tokens, batch_tokens // 2))
        if lowered < self.max_batch_tokens:
            log.warning(
                "%s: max_batch_tokens lowered from %d to %d for the rest of this run",
                err,
                self.max_batch_tokens,
                lowered,
            )
            self.max_batch_tokens = lowered


def check_openvino_fits(root: Path, card: ModelCard, device: str, runtime: str) -> None:
    """OpenVINO runs fp32 exports on the CPU; anything else is refused before loading."""
    if resolve_device(device) != "cpu":
        raise DeviceError(
            f"workers.runtime {runtime} runs on the CPU only; use workers.device: cpu, or "
            "workers.runtime: onnxruntime on a GPU"
        )
    if card.dtype != "fp32":
        raise DeviceError(
            f"{root} is a {card.dtype} export; workers.runtime {runtime} runs fp32 exports "
            "(openvino-bf16 computes an fp32 export in bfloat16): export with --dtype fp32, or "
            "use workers.runtime: onnxruntime"
        )


def cpu_lanes(device: str, threads: int | None) -> int:
    """Batches run at once by an embedder with parallel_batches: `threads` on the CPU, else one.
    onnxruntime splits each operator across its threads and waits for the slowest; a lane never
    waits. On this project's 2 cores two lanes took 0.85-0.98x the time of one session on two
    threads for bare session runs (MiniLM fp32 and int8, 2,000 stdlib texts, a benchmark running
    beside), but 0.97x through the embedder with two task-sized calls at once, as an actor runs
    them (int8, the stdlib corpus, alone). A lane's vectors are the same to the last bit."""
    if threads is None or threads < 2 or resolve_device(device) != "cpu":
        return 1
    return threads


def chunk_spans(n: int) -> Iterator[tuple[int, int]]:
    """(start, stop) of the chunks n texts are tokenized in: FIRST_CHUNK, doubling to MAX_CHUNK."""
    start, size = 0, FIRST_CHUNK
    while start < n:
        yield start, min(n, start + size)
        start, size = start + size, min(2 * size, MAX_CHUNK)
