"""Test-only fault injection through `u2seg_core.steps.step_hooks` (nothing of this lives in the library).

`U2SEG_FAULT_INJECT="stage:shard-00001[,stage:shard-00003:exit:/tmp/marker]"` makes that step raise
`InjectedFault` (or, with `:exit:<file>`, kill its process once: the file guards against a second kill).
The hook is installed in the pytest process by tests/conftest.py and in Dask worker processes by `dask_setup`
(Dask's worker preload, see `in_dask_workers`).
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator

from u2seg_core.steps import step_hooks

FAULT_ENV = "U2SEG_FAULT_INJECT"


class InjectedFault(RuntimeError):
    """Raised by the U2SEG_FAULT_INJECT hook."""


def inject_faults(stage: str, shard: str) -> None:
    for entry in filter(None, os.environ.get(FAULT_ENV, "").split(",")):
        fault_stage, fault_shard, *mode = entry.split(":", 3)
        if (fault_stage, fault_shard) != (stage, shard):
            continue
        if mode[:1] == ["exit"]:
            guard = mode[1]
            if not os.path.exists(guard):
                open(guard, "w").close()
                os._exit(70)
        else:
            raise InjectedFault(f"{FAULT_ENV} injected a fault into {stage} {shard}")


def install() -> None:
    if inject_faults not in step_hooks:
        step_hooks.append(inject_faults)


def dask_setup(worker) -> None:  # Dask preload entry point
    install()


@contextmanager
def in_dask_workers() -> Iterator[None]:
    """Dask worker processes started inside the block import this module (and find it) at start-up."""
    import dask

    here = os.path.dirname(os.path.abspath(__file__))
    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [here, saved]))
    try:
        with dask.config.set({"distributed.worker.preload": ["fault_injection"]}):
            yield
    finally:
        if saved is None:
            os.environ.pop("PYTHONPATH")
        else:
            os.environ["PYTHONPATH"] = saved
