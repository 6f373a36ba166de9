"""Run: one onnxruntime session with explicitly chosen providers, fed through IOBinding.

onnxruntime quietly falls back to the CPU when the CUDA provider cannot load; for a GPU job that
means hours at a fraction of the speed with no error. So the device is checked twice: that the
installed onnxruntime has the provider at all, and that the session really got it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import onnxruntime as ort

from workers.errors import DeviceError, DeviceOutOfMemory, is_out_of_memory
from workers.model_dir import CUDA_ONLY_LAYOUTS, GRAPH_INPUTS, GRAPH_OUTPUT

log = logging.getLogger(__name__)

__all__ = ["DEVICES", "DeviceError", "OnnxSession", "Session", "providers_for", "resolve_device"]

DEVICES = ("cpu", "cuda")
# Where the NVIDIA driver lists the GPUs it sees; onnxruntime-gpu reports its CUDA provider as
# available whether or not there is a GPU, so that alone cannot decide "auto".
NVIDIA_GPUS = Path("/proc/driver/nvidia/gpus")
# onnxruntime's `sdpa_kernel` bits (contrib_ops/cpu/bert/attention_common.h, AttentionBackend):
# flash 1, memory-efficient 2, TRT fused 4, cuDNN flash 8, math 16, TRT flash 32, TRT cross 64.
# All of them: what onnxruntime enables by default, plus cuDNN's flash attention, which it
# leaves off unless asked and which is the only fast kernel for MultiHeadAttention with a 1-D
# key-length mask (the `mha` layout).
SDPA_WITH_CUDNN = 1 | 2 | 4 | 8 | 16 | 32 | 64
CUDNN_LAYOUTS = ("mha",)
# The export splits SkipLayerNormalization into Add and LayerNormalization for the CPU, whose
# fused kernel is the slower (export/layer_norm.py); onnxruntime must not fuse them back there.
CPU_DISABLED_FUSIONS = ["SkipLayerNormFusion"]


def resolve_device(device: str) -> str:
    """'auto' becomes 'cuda' where onnxruntime has CUDA and the machine a GPU, else 'cpu'."""
    if device != "auto":
        return device
    has_gpu = NVIDIA_GPUS.is_dir() and any(NVIDIA_GPUS.iterdir())
    cuda = "CUDAExecutionProvider" in ort.get_available_providers()
    return "cuda" if has_gpu and cuda else "cpu"


def providers_for(
    device: str, device_id: int = 0, exact_fp32: bool = True, attention: str = "attention"
) -> list[str | tuple[str, dict[str, Any]]]:
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device != "cuda":
        raise DeviceError(f"device must be auto or one of {', '.join(DEVICES)}, got {device!r}")
    available = ort.get_available_providers()
    if "CUDAExecutionProvider" not in available:
        raise DeviceError(
            f"device 'cuda' asked for, but onnxruntime {ort.__version__} has no CUDA provider "
            f"(it has {', '.join(available)}): install onnxruntime-gpu, or set device: cpu"
        )
    preload_cuda()
    options = cuda_options(device_id, exact_fp32, attention)
    return [("CUDAExecutionProvider", options), "CPUExecutionProvider"]


def cuda_options(device_id: int, exact_fp32: bool, attention: str = "attention") -> dict[str, Any]:
    sdpa = {"sdpa_kernel": SDPA_WITH_CUDNN} if attention in CUDNN_LAYOUTS else {}
    return {
        **sdpa,
        # Inside a Ray actor with num_gpus=1 the one visible GPU is device 0.
        "device_id": device_id,
        # Batches vary in shape; growing the arena by what is asked, not by powers of two,
        # keeps a long run's memory near its largest batch instead of doubling past it.
        "arena_extend_strategy": "kSameAsRequested",
        # TF32 matmuls keep 10 mantissa bits, so an fp32 export would no longer be held to its
        # reference's 0.9999 cosine; fp16 graphs do not use it either way.
        "use_tf32": 0 if exact_fp32 else 1,
        # Copies run on the compute stream, so a batch's inputs are on the device, in order,
        # before its kernels start; no extra synchronisation.
        "do_copy_in_default_stream": 1,
    }


def preload_cuda() -> None:
    """Loads the CUDA and cuDNN libraries onnxruntime needs before the first session, from the
    nvidia-* wheels when they are installed (onnxruntime >= 1.21), so a missing one is named
    here instead of the provider silently not loading."""
    preload = getattr(ort, "preload_dlls", None)
    if preload is not None:
        preload()


class Session(Protocol):
    """What the embedder runs batches on: OnnxSession, or workers/openvino_session.py's."""

    device: str
    runtime: str

    def providers(self) -> list[str]: ...

    def describe(self) -> str: ...

    def run(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray: ...


class OnnxSession:
    runtime = "onnxruntime"

    def __init__(
        self,
        path: str | Path,
        device: str = "cpu",
        threads: int | None = None,
        device_id: int = 0,
        exact_fp32: bool = True,
        spin: bool = True,
        attention: str = "attention",
        profile_prefix: str | Path | None = None,
    ) -> None:
        """profile_prefix: onnxruntime's profiler on, its JSON trace (every node's time and
        shapes) written at end_profiling() to a file whose name starts so (bench/ops.py)."""
        device = resolve_device(device)
        options = ort.SessionOptions()
        # The export fused attention, layer norm and GELU already; ALL adds the layout and
        # constant-folding passes that need the provider, at a load-time cost of a second.
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads is not None:
            if threads < 1:
                raise ValueError(f"threads must be at least 1, got {threads}")
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        if not spin:
            # onnxruntime's pool threads busy-wait between runs by default: right for a batch
            # job that feeds them back to back, wrong for a server whose HTTP proxy and event
            # loop need those cores between requests.
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if profile_prefix is not None:
            options.enable_profiling = True
            options.profile_file_prefix = str(profile_prefix)
        if device == "cpu" and attention in CUDA_ONLY_LAYOUTS:
            raise DeviceError(
                f"{path} has the {attention} attention layout, which runs on CUDA only; use "
                "workers.device: cuda, or export for the CPU with --attention attention"
            )
        self.device = device
        self._device_id = device_id
        self._session = ort.InferenceSession(
            str(path),
            options,
            providers=providers_for(device, device_id, exact_fp32, attention),
            disabled_optimizers=CPU_DISABLED_FUSIONS if device == "cpu" else None,
        )
        got = self._session.get_providers()
        if device == "cuda" and got[0] != "CUDAExecutionProvider":
            raise DeviceError(
                f"onnxruntime could not start its CUDA provider for {path} (it runs on {got}); "
                "its warning above names the missing CUDA or cuDNN library"
            )
        names = tuple(i.name for i in self._session.get_inputs())
        output = self._session.get_outputs()[0].name
        if sorted(names) != sorted(GRAPH_INPUTS) or output != GRAPH_OUTPUT:
            raise DeviceError(
                f"{path} takes {names} and gives {output}; "
                f"embedpipe needs inputs {GRAPH_INPUTS} and output {GRAPH_OUTPUT}: re-export it"
            )

    def providers(self) -> list[str]:
        """The providers the session really got, first the one that runs the graph."""
        return list(self._session.get_providers())

    def end_profiling(self) -> Path:
        """Ends the profiler of a session made with profile_prefix; its trace file."""
        return Path(self._session.end_profiling())

    def describe(self) -> str:
        """The device in words, for messages: `cpu` or `cuda:0`."""
        return f"cuda:{self._device_id}" if self.device == "cuda" else self.device

    def run(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """Pooled float32 vectors (rows x dim) for one padded batch."""
        # A binding per call keeps concurrent calls from different threads apart.
        binding = self._session.io_binding()
        ids_name, mask_name = GRAPH_INPUTS
        binding.bind_cpu_input(ids_name, input_ids)
        binding.bind_cpu_input(mask_name, attention_mask)
        binding.bind_output(GRAPH_OUTPUT, self.device, self._device_id)
        try:
            self._session.run_with_iobinding(binding)
        except Exception as err:
            if is_out_of_memory(err):
                rows, width = input_ids.shape
                raise DeviceOutOfMemory(
                    f"{self.describe()} ran out of memory on a batch of {rows} x {width} tokens"
                ) from err
            raise
        out: np.ndarray = binding.copy_outputs_to_cpu()[0]
        return out.astype(np.float32, copy=False)
