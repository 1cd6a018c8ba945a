"""Model adapters (layer 2): loading weights by preset, hub id or path from one models
directory, and running them on batches. Model libraries are imported lazily."""
