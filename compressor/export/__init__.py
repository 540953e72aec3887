"""From the pruned graph to a verified ONNX file in the chosen storage format."""
