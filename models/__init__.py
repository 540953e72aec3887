"""Example models: definitions, training scripts, small trained weights."""
