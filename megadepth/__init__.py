"""megadepth: a Megatron-style GPT trainer whose hyperparameters transfer across depth."""

__version__ = "0.1.0"
