"""``python -m fiftyone_ssa`` (also what ``torchrun -m fiftyone_ssa`` runs)."""

from fiftyone_ssa.cli import main

if __name__ == "__main__":
    main()
