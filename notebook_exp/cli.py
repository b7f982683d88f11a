"""``notebook-exp``: the command line.

    notebook-exp demo                run a small real sweep into the store and show it
    notebook-exp runs [-e EXP]       print the runs table
    notebook-exp sql "SELECT ..."    run a read-only query on the store
    notebook-exp view                serve the viewer (Panel) for the store
"""

from __future__ import annotations

import argparse
import sys

from . import __version__
from .demo import DEFAULT_STEPS

STORE_HELP = "store file (default: $NOTEBOOK_EXP_STORE or ./.notebook_exp/store.duckdb)"


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
    from .config import get_settings
    from .demo import run_sweep
    from .store import sql

    print(f"Sweeping 4 runs x {args.steps} steps into {get_settings().store_path}")
    ids = run_sweep(steps=args.steps)
    summary = sql(
        """SELECT r.name, r.status, json_extract(r.params, '$.lr')::DOUBLE AS lr,
                  json_extract(r.params, '$.batch_size')::INT AS batch_size,
                  count(m.value) AS points,
                  round(arg_max(m.value, m.step) FILTER (WHERE m.key = 'loss'), 4) AS final_loss,
                  round(arg_max(m.value, m.step) FILTER (WHERE m.key = 'acc'), 4) AS final_acc
           FROM runs r JOIN metrics m USING (run_id)
           WHERE r.run_id IN (SELECT unnest(?))
           GROUP BY ALL ORDER BY final_loss""",
        [ids],
    )
    print("\nRead back from DuckDB:")
    _print_frame(summary)
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


def cmd_view(args) -> int:
    import notebook_exp_viewer as viewer

    from .config import get_settings

    print(f"Serving the viewer on http://{args.host}:{args.port}/ (Ctrl-C stops it)")
    viewer.serve(store=get_settings().store_path, host=args.host, port=args.port, show=args.show,
                 basic_auth=args.basic_auth)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="notebook-exp",
        description="Run and track ML experiments from Jupyter; this CLI reads and serves the store.",
        epilog="Environment: NOTEBOOK_EXP_STORE, NOTEBOOK_EXP_SINKS, NOTEBOOK_EXP_FAKE_GPUS, NOTEBOOK_EXP_LOCK_DIR.",
    )
    parser.add_argument("--version", action="version", version=f"notebook-exp {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = sub.add_parser("demo", help="run a small real sweep into the store, print it, then serve the viewer")
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

    view = sub.add_parser("view", help="serve the viewer web app for the store")
    view.add_argument("--store", help=STORE_HELP)
    view.add_argument("--show", action="store_true", help="open a browser")
    view.set_defaults(func=cmd_view)
    demo.set_defaults(show=False)
    for target in (view, demo):
        target.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
        target.add_argument("--port", type=int, default=5006, help="port (default 5006)")
        target.add_argument("--basic-auth", metavar="PASSWORD_OR_FILE",
                            help="require this password (or the one in this file); needed to bind off loopback")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _use_store(getattr(args, "store", None))
    from .exceptions import NotebookExpError

    try:
        return args.func(args)
    except NotebookExpError as exc:
        print(f"notebook-exp: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
