"""Facts about ONNX files: size, parameters, FLOPs, predictions, latency, memory, budgets."""
