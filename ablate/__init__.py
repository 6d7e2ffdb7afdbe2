"""ablate: an evaluation-first ablation harness for learning from preference feedback."""

__version__ = "0.1.0"
