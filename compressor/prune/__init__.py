"""Pruning (torch only, never ONNX): count, rank, select, compensate, shrink, fine-tune."""
