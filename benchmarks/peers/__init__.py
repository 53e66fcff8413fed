"""The benchmark peers: servers (each run from its own environment under .bench/), their launcher and clients."""
