"""Errors of the embedder that callers catch, importable without loading onnxruntime."""


class DeviceError(RuntimeError):
    """The device asked for cannot be used by this onnxruntime on this machine."""
