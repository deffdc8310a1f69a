"""``budgetkit run`` puts this directory first on its script's ``PYTHONPATH``, so every Python
child of the script (``subprocess``, ``multiprocessing`` spawn and forkserver) runs this at
start-up: it joins the run's session (``$BUDGETKIT_RUN``) and instruments the SDKs, then runs
the ``sitecustomize`` it hides, if there is one. Without ``$BUDGETKIT_RUN`` it does nothing
else.
"""

from __future__ import annotations

import os
import sys


def _join() -> None:
    if not os.environ.get("BUDGETKIT_RUN"):
        return
    try:
        from budgetkit.cli._run import join_from_environment
    except ImportError as exc:  # another interpreter, without budgetkit
        sys.stderr.write(
            f"budgetkit run: warning: {sys.executable} cannot import budgetkit ({exc}); "
            "this process's LLM calls are not charged to the run's budget\n"
        )
        return
    join_from_environment()


def _next_sitecustomize() -> None:
    import importlib.machinery
    import importlib.util

    here = os.path.dirname(os.path.abspath(__file__))
    path = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", path)
    if spec is not None and spec.loader is not None:
        module = importlib.util.module_from_spec(spec)
        sys.modules["sitecustomize"] = module
        spec.loader.exec_module(module)


_join()
_next_sitecustomize()
