"""``notebook-exp``: the command line.

    notebook-exp demo                run a small real sweep into the store and show it
    notebook-exp runs [-e EXP]       print the runs table
    notebook-exp sql "SELECT ..."    run a read-only query on the store
    notebook-exp view                serve the viewer (Panel) for the store
    notebook-exp plugins [--kind K]  list installed plugins (sinks, collectors, processors,
                                     frameworks), their versions and whether they load
    notebook-exp recover [--list]    list spills (writes kept while the store could not be written)
                                     and ingest them into the store
    notebook-exp queue [--json]      every queued and running run of every scheduler using the store,
                                     and the machine's GPUs with their holders
    notebook-exp cancel RUN_ID ...   cancel runs of any kernel or script (queued: at once; running:
                                     within their cancel_grace)
    notebook-exp priority RUN_ID N   give a queued run of any kernel or script priority N (0-10)
    notebook-exp compact [--check]   rewrite the store sorted by run, key and step in full row groups
                                     (smaller, faster to read; readers and writers keep working);
                                     --check only says whether that would help

Exit status: 0 when a command finished, and also when a server (``view``,
``demo``) was stopped by Ctrl-C (SIGINT) or SIGTERM, which is how a server
ends; 1 when a ``cancel`` or ``priority`` request was refused (the run already
ended, a running run's priority) or its owner did not answer in time; 2 for
errors (an unknown run id, a run whose owner has exited); 130 when Ctrl-C and
143 when SIGTERM interrupted other work (the demo's sweep, a query), after
runs in progress ended as cancelled.
"""

from __future__ import annotations

import argparse
import signal
import sys

from . import __version__
from ._demo import DEFAULT_STEPS

STORE_HELP = "store file (default: $NOTEBOOK_EXP_STORE or ./.notebook_exp/store.duckdb)"
EXIT_HELP = ("Exit status: 0 when done, also when Ctrl-C (SIGINT) or SIGTERM stops a server (view, demo); "
             "1 when a cancel or priority request was refused or not answered in time; "
             "2 on errors; 130 (SIGINT) or 143 (SIGTERM) when a signal interrupts other work.")
CONTROL_HELP = ("The run's owner (the kernel or script that queued it) acts within a second; this waits "
                "--timeout seconds for its answer. Exit status: 0 when done, 1 when refused (the run already "
                "ended) or not answered in time, 2 for an unknown id or a run whose owner has exited.")


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread like Ctrl-C's KeyboardInterrupt, so the
    same clean-up runs (a run in progress ends as cancelled) before exit 143."""


def _on_sigterm(_signum, _frame) -> None:
    raise Terminated("terminated by SIGTERM")


def _use_store(path: str | None) -> None:
    if path:
        import os

        from .config import reset_settings

        os.environ["NOTEBOOK_EXP_STORE"] = path
        reset_settings()


def _print_frame(frame, columns=None) -> None:
    import pandas as pd

    if columns:
        frame = frame[[c for c in columns if c in frame.columns]]
    with pd.option_context("display.width", 200, "display.max_columns", 30, "display.max_colwidth", 40):
        print(frame.to_string(index=False) if len(frame) else "(no runs)")


def cmd_demo(args) -> int:
    from ._demo import run_sweep
    from .config import get_settings
    from .store import queries

    print(f"Sweeping 6 runs (4 x {args.steps:,} steps, one that diverges, one cancelled) into "
          f"{get_settings().store_path}", flush=True)
    ids = run_sweep(steps=args.steps)
    summary = queries.read(lambda conn: queries.demo_summary(conn, ids))
    print("\nRead back from DuckDB:")
    _print_frame(summary.to_pandas())
    sys.stdout.flush()
    if args.view:
        return cmd_view(args)
    return 0


def cmd_runs(args) -> int:
    from .store import runs

    frame = runs(args.experiment, args.status)
    base = ["run_id", "experiment", "name", "status", "started_at", "duration"]
    extra = [c for c in frame.columns if c.startswith(("params.", "metrics."))]
    _print_frame(frame, base + extra)
    return 0


def cmd_sql(args) -> int:
    from .store import sql

    _print_frame(sql(args.query))
    return 0


def cmd_recover(args) -> int:
    from .config import get_settings
    from .store import get_store, spill

    settings = get_settings()
    pending = spill.pending(settings.store_path, settings.spill_dir)
    if not pending:
        print(f"no spills waiting for {settings.store_path}")
        return 0
    print(f"{len(pending)} spill(s) waiting for {settings.store_path}:")
    for info in pending:
        print(f"  {info.path}  written {info.written_at} UTC by process {info.pid}: {info.points:,} points of "
              f"{len(info.runs)} run(s), {info.ops} writes ({info.reason})")
    if args.list:
        return 0
    store = get_store(settings.store_path, settings=settings)
    store.close()  # the next open re-prepares the store, which ingests every pending spill
    store.ensure()
    left = spill.pending(settings.store_path, settings.spill_dir)
    done = len(pending) - len(left)
    print(f"ingested {done} spill(s), {sum(i.points for i in pending) - sum(i.points for i in left):,} points")
    if left:
        print(f"{len(left)} spill(s) could not be ingested (see the log above); they stay in place", file=sys.stderr)
        return 2
    return 0


def cmd_compact(args) -> int:
    """Compact the store (``store.compact``), or with ``--check`` print how fragmented it is."""
    from .config import get_settings
    from .store.compact import check, compact

    settings = get_settings()
    if args.check:
        print(check(settings.store_path, lock_timeout=settings.lock_timeout))
        return 0
    print(compact(settings.store_path, lock_timeout=settings.lock_timeout))
    return 0


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    for unit, size, sub, sub_size in (("d", 86400, "h", 3600), ("h", 3600, "m", 60), ("m", 60, "s", 1)):
        if seconds >= size:
            return f"{seconds // size}{unit}{(seconds % size) // sub_size:02d}{sub}"
    return f"{seconds}s"


def _table(rows: list[tuple]) -> str:
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows)


def _gpus_cell(entry) -> str:
    asked = "-" if not entry.gpus else f"{entry.gpus:g}"
    if entry.gpu_ids is not None:
        asked += f" of {','.join(map(str, entry.gpu_ids))}"
    return asked + (f"; holds {','.join(map(str, entry.gpus_held))}" if entry.gpus_held else "")


def format_queue(machine) -> str:
    """The text ``notebook-exp queue`` and ``%experiment_queue`` print for a ``MachineQueue``."""
    lines = [f"Queue of {machine.store} ({len(machine.running)} running, {len(machine.queued)} queued)"]
    if machine.runs:
        rows = [("RUN_ID", "NAME", "STATUS", "PRI", "POS", "GPUS", "OWNER", "TRY", "AFTER", "FOR")]
        for e in machine.runs:
            status = e.status.value + ("" if e.owner.alive is not False else " (owner gone)")
            status += "".join(f", {action} asked" for action in e.pending)
            since = f"running {_duration(e.running)}" if e.running is not None else f"waiting {_duration(e.waiting)}"
            rows.append((e.run_id, e.name[:30], status, e.priority, "-" if e.position is None else e.position,
                         _gpus_cell(e), str(e.owner), f"{e.attempts}/{e.retries + 1}",
                         ",".join(a[:8] for a in e.after) or "-", since))
        lines.append(_table(rows))
    else:
        lines.append("(nothing queued or running)")
    if machine.gpus:
        gib = 2**30
        rows = [("GPU", "NAME", "MEMORY", "UTIL", "HELD BY")]
        for g in machine.gpus:
            memory = "-" if g.memory_used is None else f"{g.memory_used / gib:.1f}/{g.memory_total / gib:.1f} GiB"
            util = "-" if g.utilization is None else f"{g.utilization:.0f}%"
            held = "; ".join(f"{h.run_id or '?'}{f' ({h.name})' if h.name else ''} pid {h.pid}"
                             + (f" {h.fraction:g}" if h.fraction < 1 else "") for h in g.holders)
            rows.append((g.index, g.name, memory, util, "reserved" if g.reserved else held or "free"))
        lines += ["", _table(rows)]
    return "\n".join(lines)


def cmd_queue(args) -> int:
    from .scheduler.machine import queue

    machine = queue(gpus=not args.no_gpus)
    if args.json:
        import json

        print(json.dumps(machine.to_dict(), indent=2))
    else:
        print(format_queue(machine))
    return 0


def _control(run_ids: list[str], action: str, value, args) -> int:
    """Ask each run's owner; one line per run. 0 if all done, 1 if any was refused or
    is pending, 2 if any could not be asked."""
    from .exceptions import NotebookExpError
    from .scheduler.api import _control as control

    status = 0
    for run_id in run_ids:
        try:
            result = control(run_id, action, value, args.by, args.timeout, f"notebook-exp {args.command}")
        except NotebookExpError as exc:
            print(f"notebook-exp: error: {exc}", file=sys.stderr)
            status = 2
            continue
        print(result.message, file=sys.stdout if result else sys.stderr)
        status = max(status, 0 if result else 1)
    return status


def cmd_cancel(args) -> int:
    return _control(args.run_ids, "cancel", None, args)


def cmd_priority(args) -> int:
    from .scheduler.control import check_priority

    return _control([args.run_id], "priority", check_priority(args.priority), args)


def cmd_view(args) -> int:
    """Serve until SIGINT or SIGTERM; the server then closes its sessions and this returns 0."""
    import notebook_exp_viewer as viewer
    from notebook_exp_viewer.server import stopped_line

    from .config import get_settings

    print(f"Serving the viewer on http://{args.host}:{args.port}/ (Ctrl-C stops it)", flush=True)
    server = viewer.serve(store=get_settings().store_path, host=args.host, port=args.port, show=args.show,
                          basic_auth=args.basic_auth, allow_control=getattr(args, "allow_control", False))
    print(stopped_line(server), flush=True)
    return 0


def cmd_plugins(args) -> int:
    """Every installed plugin: kind, name, version, and whether it loads (if not: why,
    and the install line that fixes it)."""
    from . import _plugins

    found = _plugins.installed([args.kind] if args.kind else _plugins.KINDS)
    rows = [("KIND", "NAME", "VERSION", "FROM", "STATUS")]
    for plugin in found:
        status = "ok" if plugin.loads else f"{plugin.problem}" + (f": {plugin.install}" if plugin.install else "")
        rows.append((plugin.kind, plugin.name, plugin.version or "-", plugin.distribution or "-", status))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[4])
    if not found:
        print("(none installed)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="notebook-exp",
        description="Run and track ML experiments from Jupyter; this CLI reads and serves the store.",
        epilog="Environment: NOTEBOOK_EXP_STORE, NOTEBOOK_EXP_SINKS, NOTEBOOK_EXP_FAKE_GPUS, "
               "NOTEBOOK_EXP_LOCK_DIR. " + EXIT_HELP,
    )
    parser.add_argument("--version", action="version", version=f"notebook-exp {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = sub.add_parser("demo", help="run a small real sweep into the store, print it, then serve the viewer",
                          epilog=EXIT_HELP)
    demo.add_argument("--store", help=STORE_HELP)
    demo.add_argument("--steps", type=int, default=DEFAULT_STEPS,
                      help=f"training steps per run (default {DEFAULT_STEPS:,})")
    demo.add_argument("--no-view", dest="view", action="store_false", help="stop after printing the table")
    demo.set_defaults(func=cmd_demo)

    runs = sub.add_parser("runs", help="print the runs table")
    runs.add_argument("--store", help=STORE_HELP)
    runs.add_argument("-e", "--experiment", help="only this experiment")
    runs.add_argument("--status", help="only runs with this status")
    runs.set_defaults(func=cmd_runs)

    query = sub.add_parser("sql", help="run a read-only SQL query on the store")
    query.add_argument("query", help="e.g. \"SELECT name, status FROM runs\"")
    query.add_argument("--store", help=STORE_HELP)
    query.set_defaults(func=cmd_sql)

    listing = sub.add_parser("plugins", help="list installed plugins, their versions and whether they load")
    listing.add_argument("--kind", choices=["sink", "collector", "processor", "framework"], help="only this kind")
    listing.set_defaults(func=cmd_plugins)

    recover = sub.add_parser("recover", help="list spills (writes kept on disk while the store could not be "
                                             "written) and ingest them into the store")
    recover.add_argument("--store", help=STORE_HELP)
    recover.add_argument("--list", action="store_true", help="only list them")
    recover.set_defaults(func=cmd_recover)

    compacting = sub.add_parser("compact", help="rewrite the store sorted by run, key and step in full row groups "
                                                 "(smaller, faster to read); readers and writers keep working")
    compacting.add_argument("--store", help=STORE_HELP)
    compacting.add_argument("--check", action="store_true",
                            help="only print bytes per point and whether compaction would help")
    compacting.set_defaults(func=cmd_compact)
    queued = sub.add_parser("queue", help="every queued and running run of every scheduler using the store, "
                                           "and the machine's GPUs with their holders")
    queued.add_argument("--store", help=STORE_HELP)
    queued.add_argument("--json", action="store_true", help="print it as JSON (the shape the viewer's API serves)")
    queued.add_argument("--no-gpus", action="store_true", help="leave out the GPUs")
    queued.set_defaults(func=cmd_queue)

    cancel = sub.add_parser("cancel", help="cancel runs of any kernel or script on this machine", epilog=CONTROL_HELP)
    cancel.add_argument("run_ids", nargs="+", metavar="RUN_ID", help="the run's id (a unique prefix will do)")
    priority = sub.add_parser("priority", help="give a queued run of any kernel or script a new priority",
                              epilog=CONTROL_HELP)
    priority.add_argument("run_id", metavar="RUN_ID", help="the run's id (a unique prefix will do)")
    priority.add_argument("priority", metavar="N", help="0-10, higher runs first")
    for target, func in ((cancel, cmd_cancel), (priority, cmd_priority)):
        target.add_argument("--store", help=STORE_HELP)
        target.add_argument("--by", metavar="WHO", help="who asks, as the run's events name it "
                                                        "(default: user@host pid N)")
        target.add_argument("--timeout", type=float, default=10.0, metavar="SECONDS",
                            help="how long to wait for the owner's answer (default 10)")
        target.set_defaults(func=func)

    view = sub.add_parser("view", help="serve the viewer web app for the store (until Ctrl-C or SIGTERM)",
                          epilog=EXIT_HELP)
    view.add_argument("--store", help=STORE_HELP)
    view.add_argument("--show", action="store_true", help="open a browser")
    view.add_argument("--allow-control", action="store_true",
                      help="let the Queue page cancel runs and change queued runs' priorities (any process's); "
                           "off by default: the viewer only reads")
    view.set_defaults(func=cmd_view)
    demo.set_defaults(show=False)
    for target in (view, demo):
        target.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
        target.add_argument("--port", type=int, default=5006, help="port (default 5006)")
        target.add_argument("--basic-auth", metavar="PASSWORD_OR_FILE",
                            help="require this password (or the one in this file); needed to bind off loopback")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns the exit status (see the module docstring)."""
    args = build_parser().parse_args(argv)
    _use_store(getattr(args, "store", None))
    from .exceptions import NotebookExpError

    previous = _catch_sigterm()
    try:
        return args.func(args)
    except NotebookExpError as exc:
        print(f"notebook-exp: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        terminated = isinstance(exc, Terminated)
        print(f"notebook-exp: {'terminated' if terminated else 'interrupted'}", file=sys.stderr)
        return 143 if terminated else 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _catch_sigterm():
    """Turn SIGTERM into ``Terminated`` (main thread only); returns the handler it replaced."""
    try:
        return signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:  # not the main thread: leave signals to the caller
        return None


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
