"""Hydra/CLI glue: config composition and resolvers, start-up checks, sweeps, DDP under Hydra."""
