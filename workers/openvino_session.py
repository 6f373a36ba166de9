"""Run an fp32 export on the CPU with OpenVINO instead of onnxruntime (`workers.runtime`).

OpenVINO's CPU plugin reads the same model.onnx (onnxruntime's fused Attention, BiasGelu and
layer norms included) and runs it with oneDNN. On this project's 2-core Xeon with AMX,
all-MiniLM-L6-v2 over 25 real batches of the stdlib corpus, one thread each (`make bench-peers`
measures whole runs): `openvino` took 0.93x onnxruntime's time with the same vectors (cosine
1.00000, a difference of at most ~1e-6 a component); `openvino-bf16` computes in bfloat16 on
AMX or AVX512-BF16 and took 0.33-0.35x the time, at cosine 0.99997 or more to fp32 (the int8
export: 0.48x, cosine 0.983 at worst). OpenVINO is an optional extra:
`pip install 'embedpipe[openvino]'`.

Unlike onnxruntime's CPU kernels, OpenVINO's do not give a text the same last bits whatever its
batch mates: a text's fp32 vector moves by up to ~1e-6 a component between batches (bf16: ~3e-3).
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import numpy as np

from workers.errors import DeviceError
from workers.model_dir import GRAPH_INPUTS, GRAPH_OUTPUT

log = logging.getLogger(__name__)

RUNTIMES = ("onnxruntime", "openvino", "openvino-bf16")
# What each OpenVINO runtime computes in. The CPU plugin's default on AMX CPUs is bf16, so f32 is
# always asked for explicitly.
PRECISION = {"openvino": "f32", "openvino-bf16": "bf16"}
# The dtype whose canary floor a runtime's vectors must meet (workers/canary.py)
COMPUTE_DTYPE = {"openvino-bf16": "bf16"}
# (input_ids, attention_mask) of the batch each session runs once as it is made: two rows of
# four [PAD]-id tokens.
WARM_UP_BATCH = (np.zeros((2, 4), dtype=np.int64), np.ones((2, 4), dtype=np.int64))


class OpenVinoSession:
    """One compiled model; `lanes` streams of one thread each run that many batches at once,
    one inference request per calling thread."""

    def __init__(self, path: str | Path, runtime: str, threads: int | None, lanes: int = 1) -> None:
        if runtime not in PRECISION:
            raise ValueError(f"runtime must be one of {', '.join(PRECISION)}, got {runtime!r}")
        ov = _import_openvino(runtime)
        self.device = "cpu"
        self.runtime = runtime
        config: dict[str, Any] = {
            "INFERENCE_PRECISION_HINT": PRECISION[runtime],
            "NUM_STREAMS": lanes,
            # OpenVINO pins its threads to cores it numbers from 0; two actors on one node would
            # share the same cores. Ray places the actors; the kernel places their threads.
            "ENABLE_CPU_PINNING": False,
        }
        if threads is not None:  # else OpenVINO's own choice: every core, as onnxruntime's
            config["INFERENCE_NUM_THREADS"] = max(threads, lanes)
        try:
            self._compiled = ov.Core().compile_model(str(path), "CPU", config)
        except RuntimeError as err:
            raise DeviceError(
                f"OpenVINO cannot run {path} ({_first_line(err)}); use workers.runtime: "
                "onnxruntime, or an fp32 export made for the CPU"
            ) from err
        self._check_io(path)
        self._check_precision()
        self._local = threading.local()
        # The first copy of an input into a request's tensor (`tensor.data`, in OpenVINO's Python
        # bindings) runs a C++ function-local static's initialiser that lets go of the GIL; two
        # lanes doing that first copy at once deadlock, one holding the GIL and waiting for the
        # static, the other holding the static and waiting for the GIL (a CI run hung on it for
        # an hour: tests/workers/test_openvino.py). One small batch on this thread, before any
        # lane runs, initialises it.
        self.run(*WARM_UP_BATCH)

    def _check_io(self, path: str | Path) -> None:
        names = tuple(sorted(i.get_any_name() for i in self._compiled.inputs))
        outputs = [o.get_any_name() for o in self._compiled.outputs]
        if names != tuple(sorted(GRAPH_INPUTS)) or outputs[:1] != [GRAPH_OUTPUT]:
            raise DeviceError(
                f"{path} takes {names} and gives {outputs}; embedpipe needs inputs "
                f"{GRAPH_INPUTS} and output {GRAPH_OUTPUT}: re-export it"
            )

    def _check_precision(self) -> None:
        got = str(self._compiled.get_property("INFERENCE_PRECISION_HINT"))
        if self.runtime == "openvino-bf16" and "bf16" not in got and "bfloat16" not in got:
            # A CPU without AMX or AVX512-BF16: the vectors are fp32's, only not faster.
            log.warning("this CPU has no bfloat16 arithmetic: OpenVINO computes in %s", got)

    def providers(self) -> list[str]:
        return [f"OpenVINO CPU ({PRECISION[self.runtime]})"]

    def describe(self) -> str:
        return f"cpu ({self.runtime})"

    def run(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """Pooled float32 vectors (rows x dim) for one padded batch."""
        request = getattr(self._local, "request", None)
        if request is None:  # a request per lane thread: requests are not thread-safe
            request = self._local.request = self._compiled.create_infer_request()
        ids_name, mask_name = GRAPH_INPUTS
        found = request.infer({ids_name: input_ids, mask_name: attention_mask})
        # The request reuses its output buffer on the next call: copy it out.
        return np.array(found[GRAPH_OUTPUT], dtype=np.float32, copy=True)


def _import_openvino(runtime: str) -> Any:
    try:
        import openvino
    except ImportError as err:
        raise DeviceError(
            f"workers.runtime {runtime} needs OpenVINO, which is not installed here: "
            "pip install 'embedpipe[openvino]' (on every node), or use workers.runtime: "
            "onnxruntime"
        ) from err
    return openvino


def _first_line(err: Exception) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[-1][:200] if lines else type(err).__name__
