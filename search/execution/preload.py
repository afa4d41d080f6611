"""What the launcher's forkserver imports once (search.execution.forked): every module a CPU worker
imports on its way to its first trial, then frozen for the garbage collector.

Without the freeze, a forked worker's first full collection walks every object the imports
made and writes to each one's header, copying their pages into the worker: measured with 64
curves workers, about 500 MB of the forkserver's memory became each worker's own (and,
shared with it, its forked MLflow writer's). `gc.freeze()` moves those objects where the
collector never looks, as Python's documentation advises before a fork.
"""

from __future__ import annotations

import gc
import importlib
import warnings

# A forked worker is prepared as multiprocessing prepares any child of a `python -m search.run`
# parent: it runs search.run again as its `__mp_main__` (where the worker's main is unpickled
# from), and runpy warns, on the launcher's stderr, that search.run is already imported: it is,
# on purpose, in MODULES below. Expected here, so not shown; forked workers inherit the filter.
warnings.filterwarnings("ignore", category=RuntimeWarning, module="runpy",
                        message="'search.run' found in sys.modules")

MODULES = ("torch", "torchvision", "mlflow", "optuna", "sklearn.metrics", "search.run",
           "search.execution.session", "search.execution.trial", "search.tracking.writer",
           "objectives.train", "objectives.curves", "spaces.registry")

for _name in MODULES:
    importlib.import_module(_name)
gc.collect()
gc.freeze()
