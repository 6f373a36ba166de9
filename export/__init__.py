"""Model -> ONNX model directory + card, and parity against the PyTorch reference.

Needs the `export` extra (PyTorch, transformers, sentence-transformers); the workers never import
this package, so the runtime stays free of PyTorch.
"""
