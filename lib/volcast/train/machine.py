"""How the train stage runs on the machine: BLAS limited to one thread and numpy's huge-page advice off,
as decorators of ``stage.run``."""

from __future__ import annotations

import functools


def blas_in_one_thread(fn):
    """Run ``fn`` with BLAS (OpenBLAS under numpy) limited to one thread. Its threads busy-wait after every call
    (the metrics' dot products, the HAR fit and prediction): on a machine with few cores they took the cores from
    CatBoost and the evaluation's own threads, and none of the stage's BLAS calls is large enough to gain from
    them."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from threadpoolctl import threadpool_limits  # scikit-learn's dependency

        with threadpool_limits(limits=1, user_api="blas"):
            return fn(*args, **kwargs)

    return wrapper


def small_pages(fn):
    """Run ``fn`` with numpy's huge-page advice off (numpy asks the kernel for transparent huge pages for every large
    array; where the kernel honours that only for advised memory and compacts memory to find one, as on the
    benchmark machine, each new array of the stage's many large temporaries paid a compaction in system time)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            from numpy._core import multiarray
        except ImportError:  # numpy < 2
            from numpy.core import multiarray
        switch = getattr(multiarray, "_set_madvise_hugepage", None)
        before = switch(False) if switch is not None else None
        try:
            return fn(*args, **kwargs)
        finally:
            if switch is not None:
                switch(before)

    return wrapper
