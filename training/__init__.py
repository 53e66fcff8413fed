"""Training: data sets, train loops and losses, evaluation. Never imported by serving."""

# The seed of the 100 samples every quality table judges (``genserve eval``'s default); light
# here, so that the CLI can read it without importing torch.
EVAL_SEED = 2026
