"""Errors of the embedder that callers catch, importable without loading onnxruntime."""


class DeviceError(RuntimeError):
    """The device asked for cannot be used by this onnxruntime on this machine."""


class DeviceOutOfMemory(RuntimeError):
    """One batch did not fit the device's memory; a smaller one may (the embedder splits it)."""


# What onnxruntime's exception says when the device ran out of memory: its arena
# ("BFCArena::AllocateRawInternal ... Failed to allocate memory for requested buffer of size N"),
# the CUDA runtime ("CUDA failure 2: out of memory") or cuBLAS/cuDNN ("..._STATUS_ALLOC_FAILED").
OUT_OF_MEMORY_MARKS = ("failed to allocate memory", "out of memory", "alloc_failed")


def is_out_of_memory(err: BaseException) -> bool:
    text = str(err).lower()
    return any(mark in text for mark in OUT_OF_MEMORY_MARKS)
