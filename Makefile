# Both targets do their own set-up (virtual environment, packages, database); re-runs are quick.
.PHONY: setup demo test lint

setup:
	bash scripts/setup.sh

demo: setup
	.venv/bin/fiftyone-ssa demo --download

test: setup
	.venv/bin/ruff check fiftyone_ssa plugins tests benchmarks
	.venv/bin/lint-imports
	.venv/bin/python -m pytest -q

lint: setup
	.venv/bin/ruff check fiftyone_ssa plugins tests benchmarks
	.venv/bin/ruff format --check fiftyone_ssa plugins tests benchmarks
