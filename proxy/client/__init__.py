"""The developer's laptop: `env`, `trust`, `doctor`. Standard library only (and `cryptography`
for reading a CA file): these never import the engine."""
