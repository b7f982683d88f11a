"""Entry point of a process-executor run: ``python -m notebook_exp.scheduler._child PAYLOAD STATUS_FD``.

It starts the run in the store, calls the function, ends the run, and writes
``PAYLOAD.result``: the status, the error, the function's return value, and
``recorded``, true only when the run was started and ended in the store. When
it is false (the run could not start: an unknown sink, a store it could not
open; or its end could not be written) the parent records the outcome.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import traceback

#: Seconds between two looks at whether the scheduler that started this process still runs.
PARENT_CHECK_EVERY = 0.5
_orphaned: list[int] = []  # the parent's pid, once it is gone


def _terminate(signum, frame):  # noqa: ARG001
    from notebook_exp.exceptions import RunCancelled

    if _orphaned:
        raise RuntimeError(f"lost: the scheduler that started this run (pid {_orphaned[0]}) exited, "
                           "so nothing waits for its result")
    raise RunCancelled("terminated (SIGTERM)")


def _watch_parent(parent: int) -> None:
    """Stop the run when the scheduler that started it dies (kill -9 included): an
    orphan would run on for ever, holding its GPUs, with nobody to report to. The
    run then ends ``failed`` with the reason."""
    import time

    while True:
        time.sleep(PARENT_CHECK_EVERY)
        if os.getppid() != parent:
            _orphaned.append(parent)
            os.kill(os.getpid(), signal.SIGTERM)
            return


def _report_progress(run, status_fd: int) -> None:
    """Tell the parent how far the run is, at most five times a second."""
    import time

    state, sent = run.progress_state, None
    while True:
        time.sleep(0.2)
        if state.updated != sent and state.started is not None:
            sent = state.updated
            total = "-" if state.total is None else str(state.total)
            try:
                os.write(status_fd, f"progress {state.n} {total}\n".encode())
            except OSError:
                return


def _attempt(job: dict, status_fd: int) -> dict:
    """Run one attempt; returns its outcome for the parent (see the module docstring)."""
    from notebook_exp.models import RunStatus
    from notebook_exp.tracking.run import outcome, start_run

    try:
        run = start_run(job["name"], job["experiment"], job["params"], job["tags"], job["sinks"],
                        run_id=job["run_id"], store=job["store"], capture=job["capture"], resume=job["resume"],
                        columns={"attempts": job["attempts"], "gpus": job["gpus"]})
    except BaseException as exc:  # noqa: BLE001 - the run never started: the parent records it
        status, error = outcome(exc)
        return {"status": status.value, "error": error, "recorded": False}
    result, status, error = None, RunStatus.COMPLETED, None
    try:
        run.gpus = job["gpus"]
        run.device = "cuda:0" if job["gpus"] else "cpu"
        os.write(status_fd, b"running\n")
        threading.Thread(target=_report_progress, args=(run, status_fd), daemon=True).start()
        result = job["fn"](run, **job["params"])
    except BaseException as exc:  # noqa: BLE001 - recorded by the run, reported to the parent
        status, error = outcome(exc)
    return {"status": status.value, "error": error, "result": result, "recorded": _end(run, status, error)}


def _end(run, status, error: str | None) -> bool:
    """End ``run`` in the store; False (with the traceback on stderr) if that failed."""
    try:
        run.end(status, error)
    except BaseException:  # noqa: BLE001 - the parent records the outcome instead
        traceback.print_exc()
        return False
    return True


def _send(out: dict, path: str) -> None:
    """Write the outcome where the parent reads it."""
    import cloudpickle

    try:
        data = cloudpickle.dumps(out)
    except Exception as exc:  # noqa: BLE001 - an unpicklable return value
        out["result"] = None
        out["error"] = out.get("error") or f"the return value could not be sent back: {exc!r}"
        data = cloudpickle.dumps(out)
    with open(path, "wb") as fh:
        fh.write(data)


def main(argv: list[str]) -> int:
    import cloudpickle

    payload_path, status_fd = argv[1], int(argv[2])
    with open(payload_path, "rb") as fh:
        job = cloudpickle.load(fh)
    signal.signal(signal.SIGTERM, _terminate)
    threading.Thread(target=_watch_parent, args=(os.getppid(),), name="notebook_exp-child-parent",
                     daemon=True).start()
    out = _attempt(job, status_fd)
    _send(out, payload_path + ".result")
    from notebook_exp.models import RunStatus

    return 0 if out["status"] == RunStatus.COMPLETED.value else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
