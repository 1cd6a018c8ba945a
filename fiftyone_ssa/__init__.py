"""fiftyone-ssa."""
