"""Training: data sets, train loops and losses, evaluation. Never imported by serving."""
