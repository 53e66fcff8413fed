"""Images/s of genserve's fused DDPM sampler against diffusers' DDPMScheduler loop and a literal
Algorithm 2 loop, same UNet, batch, steps and threads. Writes benchmarks/results/sampler.json and
sampler.png next to it.

    python -m benchmarks.sampler [--model ddpm-mnist] [--models DIR] [--batch 16] [--steps 1000] [--json OUT]

A thin wrapper of ``genserve bench sampler`` (same options; the code is ``genserve.bench_sampler``, so
the console script works outside the repository too). Needs ``pip install -e '.[bench]'``.
"""

from __future__ import annotations

import sys

from genserve.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "sampler", *sys.argv[1:]]))
