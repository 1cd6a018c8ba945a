"""Reaching the ``fiftyone_ssa`` library from the operators, and reporting progress.

Nothing here runs at plugin import: the library (and with it torch and the model libraries) is
imported inside ``execute`` only, so listing plugins stays cheap.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import time
from pathlib import Path
from types import ModuleType

# The plugin directory is the repository root: <root>/plugins/ssa_operators/library.py.
PLUGIN_ROOT = Path(__file__).resolve().parents[2]


def import_library(module: str) -> ModuleType:
    """Imports ``module`` (a ``fiftyone_ssa`` module), installed or shipped with the plugin.

    ``fiftyone plugins download`` copies the whole repository, library included, into the
    plugins directory; when ``fiftyone_ssa`` is not installed as a package, the copy next to
    this plugin is loaded under its own name (its dependencies come from ``requirements.txt``).

    Args:
        module: a dotted module name starting with ``fiftyone_ssa``.

    Raises:
        ImportError: neither an installed ``fiftyone_ssa`` nor the plugin's copy is available.
    """
    if module != "fiftyone_ssa" and not module.startswith("fiftyone_ssa."):
        raise ValueError(f"Expected a `fiftyone_ssa` module, but got {module!r}")
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as err:
        if err.name != "fiftyone_ssa":
            raise
    _load_bundled_package()
    return importlib.import_module(module)


def _load_bundled_package() -> None:
    init = PLUGIN_ROOT / "fiftyone_ssa" / "__init__.py"
    if not init.is_file():
        raise ImportError(
            "the fiftyone_ssa package is not installed and the plugin has no copy of it; "
            "run `pip install .` in a clone of fiftyone-ssa"
        )
    spec = importlib.util.spec_from_file_location(
        "fiftyone_ssa", init, submodule_search_locations=[str(init.parent)]
    )
    package = importlib.util.module_from_spec(spec)
    sys.modules["fiftyone_ssa"] = package
    try:
        spec.loader.exec_module(package)
    except BaseException:
        del sys.modules["fiftyone_ssa"]
        raise


class ProgressReporter:
    """A ``progress_callback(done, total)`` that forwards to ``ctx.set_progress``.

    Delegated runs record their progress on the operation (the App's Runs page shows it);
    updates are throttled to whole percents and at most one every ``min_interval`` seconds,
    the last one always sent. Immediate runs cannot show progress from a blocking call, so
    nothing is sent for them.

    Args:
        ctx: the operator's execution context.
        what: what is counted, for the label (e.g. ``"samples"``).
        min_interval: seconds between two updates.
    """

    def __init__(self, ctx, what: str = "samples", min_interval: float = 1.0):
        self.ctx = ctx
        self.what = what
        self.min_interval = min_interval
        self.updates = 0
        self._last_percent = -1
        self._last_time = 0.0

    def fiftyone_progress(self):
        """The same reporter as a FiftyOne ``progress`` callable (it receives the bar).

        Immediate runs get ``False`` (no progress bar in the server's log).
        """
        if not self.ctx.delegated:
            return False

        def callback(bar) -> None:
            if bar.total:
                self(int(bar.iteration), int(bar.total))

        return callback

    def __call__(self, done: int, total: int) -> None:
        if not self.ctx.delegated:
            return
        percent = int(100 * done / total) if total else 100
        now = time.monotonic()
        final = done >= total
        if not final and (
            percent == self._last_percent or now - self._last_time < self.min_interval
        ):
            return
        self._last_percent, self._last_time = percent, now
        self.updates += 1
        self.ctx.set_progress(
            progress=done / total if total else 1.0, label=f"{done}/{total} {self.what}"
        )
