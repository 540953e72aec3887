"""compressor: activation-based pruning of PyTorch models into small, fast ONNX."""
