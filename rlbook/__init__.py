"""rlbook: reinforcement-learning post-training of language models, built step by step."""

__version__ = "0.1.0"
