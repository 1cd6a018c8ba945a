"""Random-weight models for tests, benchmarks and the walkthrough: tiny models (``tiny``,
``tiny_sam``), real-size architectures from kept configs (``random_init``, ``configs/``) and
seeding. Never imported by the library itself."""
