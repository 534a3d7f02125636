"""Data sources (one module each), transforms and the registry of checksums."""
