"""Exit 0 when FiftyOne's embedded MongoDB starts and answers; print the reason otherwise."""

import os
import sys

os.environ.setdefault("FIFTYONE_DO_NOT_TRACK", "true")
os.environ.setdefault("FIFTYONE_DATABASE_VALIDATION", "false")
os.environ["FIFTYONE_DATABASE_NAME"] = "fiftyone_ssa_setup_check"


def main() -> int:
    try:
        import fiftyone as fo

        dataset = fo.Dataset()
        dataset.delete()
    except Exception as err:  # any failure means "no working database"
        print(f"database check failed: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
