"""The benchmark harness: ``autostep bench`` (see :func:`run_bench`)."""

from .harness import TUNING_SEED, run_bench
from .tasks import PROBLEMS, SUITES, DataMissing, Task, build_problem
from .runner import RunConfig, run_one

__all__ = ["run_bench", "run_one", "RunConfig", "PROBLEMS", "SUITES", "Task", "DataMissing",
           "build_problem", "TUNING_SEED"]
