"""Exit 0 when FiftyOne's database starts and answers; print the reason otherwise.

``--describe`` prints, on success, one line saying which database FiftyOne uses: the user's
``FIFTYONE_DATABASE_URI``, or the embedded mongod (its path, version and data directory).
"""

import os
import sys

os.environ.setdefault("FIFTYONE_DO_NOT_TRACK", "true")
os.environ.setdefault("FIFTYONE_DATABASE_VALIDATION", "false")
os.environ["FIFTYONE_DATABASE_NAME"] = "fiftyone_ssa_setup_check"


def describe() -> str:
    """One line naming the database FiftyOne connects to."""
    import fiftyone as fo
    import fiftyone.core.odm as foo
    from fiftyone.core.service import DatabaseService

    version = foo.get_db_client().server_info().get("version", "?")
    if fo.config.database_uri:
        return f"MongoDB {version} at FIFTYONE_DATABASE_URI"
    return (
        f"embedded MongoDB {version} ({DatabaseService.find_mongod()}), "
        f"data in {fo.config.database_dir}"
    )


def main(argv: list[str]) -> int:
    try:
        import fiftyone as fo

        dataset = fo.Dataset()
        dataset.delete()
        if "--describe" in argv:
            print(describe())
    except Exception as err:  # any failure means "no working database"
        print(f"database check failed: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
