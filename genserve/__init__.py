"""genserve: a serving engine for generative image models."""

__version__ = "0.1.0"
