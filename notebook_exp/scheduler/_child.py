"""Entry point of a process-executor run: ``python -m notebook_exp.scheduler._child PAYLOAD STATUS_FD``."""

from __future__ import annotations

import os
import signal
import sys


def _terminate(signum, frame):  # noqa: ARG001
    from notebook_exp.exceptions import RunCancelled

    raise RunCancelled("terminated (SIGTERM)")


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


def main(argv: list[str]) -> int:
    import cloudpickle

    payload_path, status_fd = argv[1], int(argv[2])
    with open(payload_path, "rb") as fh:
        job = cloudpickle.load(fh)
    signal.signal(signal.SIGTERM, _terminate)
    from notebook_exp.tracking.run import outcome, start_run

    code, out = 0, {}
    try:
        run = start_run(job["name"], job["experiment"], job["params"], job["tags"], job["sinks"],
                        run_id=job["run_id"], store=job["store"],
                        columns={"attempts": job["attempts"], "gpus": job["gpus"]})
        run.gpus = job["gpus"]
        run.device = "cuda:0" if job["gpus"] else "cpu"
        os.write(status_fd, b"running\n")
        import threading

        threading.Thread(target=_report_progress, args=(run, status_fd), daemon=True).start()
        with run:
            result = job["fn"](run, **job["params"])
        out = {"status": "completed", "result": result}
    except BaseException as exc:  # noqa: BLE001 - recorded by the run, reported to the parent
        status, error = outcome(exc)
        out, code = {"status": status.value, "error": error}, 1
    try:
        data = cloudpickle.dumps(out)
    except Exception as exc:  # noqa: BLE001 - an unpicklable return value
        out["result"] = None
        out.setdefault("error", f"the return value could not be sent back: {exc!r}")
        data = cloudpickle.dumps(out)
    with open(payload_path + ".result", "wb") as fh:
        fh.write(data)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv))
