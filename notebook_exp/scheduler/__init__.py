"""The kernel-side scheduler: queue, GPU leases, thread and process executors."""

from .api import dead_letters, gpus, resubmit, submit, sweep, wait
from .core import Scheduler, get_scheduler, stop_scheduler
from .job import Job
from .spec import ExperimentSpec

__all__ = [
    "ExperimentSpec", "Job", "dead_letters", "Scheduler", "get_scheduler", "gpus", "resubmit", "stop_scheduler",
    "submit", "sweep", "wait",
]
