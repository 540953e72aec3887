"""Input and output: model files, data, and files written atomically."""
