"""IPython magics: ``%%experiment`` and the queue's line magics.

Load with ``%load_ext notebook_exp``.
"""

from __future__ import annotations

import ast

from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring

from .exceptions import NotebookExpError

__all__ = ["ExperimentMagics", "parse_assignment", "parse_grid"]


def _literal(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _split_top_level(text: str) -> list[str]:
    """Split on commas that are not inside brackets or quotes."""
    parts, depth, quote, current = [], 0, None, []
    for ch in text:
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append("".join(current))
            current = []
            continue
        current.append(ch)
    parts.append("".join(current))
    return [p.strip() for p in parts]


def parse_assignment(text: str, flag: str = "-p") -> tuple[str, str]:
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not all(part.isidentifier() for part in key.split(".")) or not value.strip():
        raise UsageError(f"{flag} takes KEY=VALUE with KEY a Python name or a dotted path (optim.lr), got {text!r}")
    return key, value.strip()


def _value(text: str):
    """A value of ``-p``/``--grid``: a Python literal when it parses, else the text. Quotes
    around a list, tuple or dict (``"[32,32]"``) only protect it: the value is the list."""
    value = _literal(text)
    if isinstance(value, str) and text[:1] in "'\"" and value.strip()[:1] in "[({":
        inner = _literal(value)
        if isinstance(inner, (list, tuple, dict)):
            return inner
    return value


def parse_grid(text: str) -> tuple[str, list]:
    """``lr=1e-3,1e-4`` -> ("lr", [0.001, 0.0001]); values are Python literals when they parse
    (``layers="[32,32]","[64,64]"`` -> two lists)."""
    key, values = parse_assignment(text, "--grid")
    items = _split_top_level(values)
    if any(not item for item in items):
        raise UsageError(f"--grid {text!r} has an empty value")
    return key, [_value(item) for item in items]


@magics_class
class ExperimentMagics(Magics):
    """``%%experiment`` and the queue magics."""

    @magic_arguments()
    @argument("name", nargs="?", help="run name (a grid adds its values to it)")
    @argument("-e", "--experiment", help="experiment the runs belong to")
    @argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE", help="a param (Python literal or text)")
    @argument("--grid", action="append", default=[], metavar="KEY=V1,V2", help="sweep a param over values")
    @argument("--sample", action="append", default=[], metavar="KEY=DIST",
              help="draw a param at random: uniform(a,b), loguniform(a,b), choice(v1,v2), randint(a,b)")
    @argument("-n", type=int, default=None, help="runs of a random sweep (with --sample)")
    @argument("--seed", type=int, default=None, help="seed of a random sweep (default: drawn, and recorded)")
    @argument("--config", metavar="NAME", default=None,
              help="the cell's (or the notebook's) config object NAME is the base; KEYs set its fields")
    @argument("--gpus", type=float, default=0, help="GPUs per run (0.5 shares one)")
    @argument("--gpu-ids", metavar="ID,ID", default=None,
              help="only these physical GPUs (e.g. 1,3); without --gpus a run takes all of them")
    @argument("--priority", type=int, default=5, help="0-10, higher runs first")
    @argument("--retries", type=int, default=0, help="attempts after a failure")
    @argument("--timeout", type=float, default=None, metavar="SECONDS", help="stop an attempt after this long")
    @argument("--executor", default="thread", help="thread | process | ray (a node of a Ray cluster)")
    @argument("--cpus", type=float, default=1, help="CPUs per run on its Ray node (--executor ray)")
    @argument("--memory", default=None, help="memory per run on its Ray node, e.g. 8GB (--executor ray)")
    @argument("--tag", action="append", default=[], help="a tag (repeatable)")
    @argument("--after", action="append", default=[], metavar="RUN_ID", help="start after this run completed")
    @argument("--wait", action="store_true", help="block until the runs end (interrupt cancels them)")
    @argument("--capture", action="append", default=[], metavar="FRAMEWORK",
              help="capture a framework's logging calls into the run (tensorboard: SummaryWriter)")
    @argument("--resume", metavar="RUN_ID", default=None,
              help="continue this stored run: steps go on after its last ones, params merge")
    @cell_magic
    def experiment(self, line: str, cell: str):
        """Run this cell in the background as a tracked experiment; the cell returns at once
        with a live card per run.

        Inside the cell, ``run`` is the Run (``run.log(loss=...)``, ``run.progress(...)``,
        ``run.track(iterable)``, ``run.device``) and every param is a variable. A
        top-level assignment to a param's name in the cell (``lr = 1e-3``) is a default
        that ``-p``/``--grid`` override. A dotted KEY (``optim.lr``) sets a nested param;
        with ``--config config`` the cell's top-level ``config = MyConfig(...)`` (or the
        notebook's ``config``) is the base, KEYs set its fields, it is validated before
        anything is queued, and ``config`` in the cell is the resulting object. ``--sample
        KEY=loguniform(1e-5,1e-1) -n 20 --seed 0`` queues a random sweep. The value of a
        last bare expression is the run's result. What the cell prints goes to its card,
        never to other cells.

        Examples::

            %%experiment baseline -e mnist -p lr=1e-3 -p layers=[64,64]
            %%experiment lr-sweep --grid lr=1e-3,1e-4 --grid bs=32,64 --gpus 1
            %%experiment pinned --gpu-ids 1,3 --gpus 1
            %%experiment --executor process --timeout 600 --retries 2 --tag nightly
            %%experiment finetune --after 3f2a9c0d11e84b7a --wait
            %%experiment --capture tensorboard
            %%experiment --resume 3f2a9c0d11e84b7a -p epochs=20
            %%experiment --config config -p optim.lr=1e-3 --grid model.layers="[32,32]","[64,64]"
            %%experiment search --sample optim.lr=loguniform(1e-5,1e-1) -n 20 --seed 0

        Thread runs (the default) see the notebook's variables; process runs get copies
        of the ones the cell uses. Bad arguments queue nothing.
        """
        args = parse_argstring(self.experiment, line)
        if not cell.strip():
            raise UsageError("the cell is empty: write the code to run under %%experiment")
        params = dict(parse_assignment(p) for p in args.param)
        params = {k: _value(v) for k, v in params.items()}
        grid = dict(parse_grid(g) for g in args.grid)
        if args.resume and (grid or args.sample):
            raise UsageError("--resume continues one run; it cannot be combined with --grid or --sample")
        if grid and args.sample:
            raise UsageError("--grid and --sample do not mix: write --sample KEY=choice(V1,V2) to draw among values")
        jobs = self._submit(args, cell, params, grid)
        from IPython.display import display

        from .widgets.run_card import RunCard, SweepView

        display(RunCard(jobs[0]) if len(jobs) == 1 else SweepView(jobs, args.name or args.experiment or ""))
        if args.wait:
            _wait_or_cancel(jobs)

    def _submit(self, args, cell: str, params: dict, grid: dict) -> list:
        from . import space
        from ._cell import CellFunction, referenced_names
        from .scheduler import sweeps
        from .scheduler.api import submit
        from .tracking.params import apply

        try:
            sample = dict(space.parse(s) for s in args.sample)
            source = self.shell.transform_cell(cell)
            base = sweeps.cell_config(args.config, source, self.shell.user_ns) if args.config else None
            names = {args.config} if args.config else {key.split(".")[0] for key in [*params, *grid, *sample]}
            if args.executor in ("process", "ray"):  # they run elsewhere: copies of what the cell uses
                used = referenced_names(source) - names - {"run"}
                captured = {k: self.shell.user_ns[k] for k in used if k in self.shell.user_ns}
                fn = CellFunction(source, names, captured=captured)
            else:
                fn = CellFunction(source, names, namespace=self.shell.user_ns)
            if args.config:
                fn = sweeps.ConfigCall(fn, args.config, base)
            options = dict(experiment=args.experiment, name=args.name, gpus=args.gpus, priority=args.priority,
                           retries=args.retries, timeout=args.timeout, executor=args.executor, tags=args.tag,
                           cpus=args.cpus, memory=args.memory,
                           after=args.after, source=cell, capture=args.capture or None)
            if args.gpu_ids is not None:
                options["gpu_ids"] = args.gpu_ids
            if sample:
                return sweeps.sweep(fn, sample, params, base=base, method="random", n=args.n, seed=args.seed,
                                    **options)
            if grid:
                return sweeps.sweep(fn, grid, params, base=base, **options)
            return [submit(fn, apply(base, params), resume=args.resume, **options)]
        except NotebookExpError as exc:
            raise UsageError(str(exc)) from None

    # -- line magics ------------------------------------------------------------
    @line_magic
    def experiment_status(self, line: str = ""):
        """Show this kernel's queue (running, queued, finished), GPUs and recent runs, live."""
        from IPython.display import display

        from .scheduler.core import get_scheduler
        from .widgets.queue_monitor import QueueMonitor

        display(QueueMonitor(get_scheduler()))

    @magic_arguments()
    @argument("run_ids", nargs="*", help="runs to wait for (default: every unfinished run of this kernel)")
    @argument("--timeout", type=float, default=None, help="give up after this many seconds")
    @line_magic
    def experiment_wait(self, line: str = ""):
        """Wait for runs to end and print how they ended. Interrupting stops waiting, not the runs."""
        args = parse_argstring(self.experiment_wait, line)
        jobs = _jobs(args.run_ids) if args.run_ids else [j for j in _scheduler_jobs() if not j.done]
        try:
            from .scheduler.api import wait

            wait(jobs, timeout=args.timeout)
        except TimeoutError:
            pass
        except KeyboardInterrupt:
            print("stopped waiting; the runs go on")
        from .widgets._ticker import ticker

        ticker.flush()
        print(_summary(jobs))

    @magic_arguments()
    @argument("run_ids", nargs="*", help="runs to cancel: of this kernel, or of any kernel or script of the machine")
    @argument("-e", "--experiment", help="cancel every unfinished run of this experiment (of this kernel)")
    @argument("--all", action="store_true", help="cancel every unfinished run of this kernel")
    @line_magic
    def experiment_cancel(self, line: str = ""):
        """Cancel runs by id, by experiment (-e) or all (--all). An id (or unique prefix) of
        a run this kernel does not own is asked of its owner, another kernel or script on
        this machine, through the store: one line says how that went."""
        args = parse_argstring(self.experiment_cancel, line)
        if not (args.run_ids or args.experiment or args.all):
            raise UsageError("name the runs to cancel, or give -e EXPERIMENT or --all")
        if not args.run_ids:
            jobs = [j for j in _scheduler_jobs() if not j.done and (args.all or j.experiment == args.experiment)]
            cancelled = sum(bool(job.cancel()) for job in jobs)
            print(f"cancelled {cancelled} run{'s' * (cancelled != 1)}")
            return
        own, foreign = _split_ids(args.run_ids)
        cancelled = sum(bool(job.cancel()) for job in own)
        if own or not foreign:
            print(f"cancelled {cancelled} run{'s' * (cancelled != 1)}")
        for run_id in foreign:
            print(_remote(run_id, "cancel", None, "%experiment_cancel"))

    @magic_arguments()
    @argument("run_id", help="the run (of this kernel, or of any kernel or script of the machine)")
    @argument("priority", type=int, help="0-10, higher runs first")
    @line_magic
    def experiment_priority(self, line: str = ""):
        """Give a queued run a new priority (0-10): it moves in its owner's queue. Works for
        runs of this kernel and of any other kernel or script on this machine."""
        args = parse_argstring(self.experiment_priority, line)
        print(_remote(args.run_id, "priority", args.priority, "%experiment_priority"))

    @magic_arguments()
    @argument("--json", action="store_true", help="print it as JSON")
    @line_magic
    def experiment_queue(self, line: str = ""):
        """Print the queue of the whole machine: every queued and running run of every kernel
        and script using this store (owner, priority, position, GPUs, how long), and the GPUs."""
        args = parse_argstring(self.experiment_queue, line)
        from .cli import format_queue
        from .scheduler.machine import queue

        try:
            machine = queue()
        except NotebookExpError as exc:
            raise UsageError(str(exc)) from None
        if args.json:
            import json

            print(json.dumps(machine.to_dict(), indent=2))
        else:
            print(format_queue(machine))

    @line_magic
    def experiment_gpus(self, line: str = ""):
        """List the GPUs this kernel may lease, with memory, utilisation, temperature and holder."""
        from .scheduler.core import get_scheduler

        infos = get_scheduler().leases.snapshot()
        if not infos:
            print("no GPUs (set NOTEBOOK_EXP_FAKE_GPUS=N to declare virtual ones)")
        for info in infos:
            gib = 2**30
            temp = f"{info.temperature:.0f}C" if info.temperature is not None else "-"
            util = f"{info.utilization:.0f}%" if info.utilization is not None else "-"
            print(f"GPU {info.index}: {info.name}  {info.memory_used / gib:.1f}/{info.memory_total / gib:.1f} GiB"
                  f"  util {util}  {temp}  {'held by ' + info.holder if info.holder else 'free'}")

    @magic_arguments()
    @argument("--port", type=int, default=0, help="port (default: a free one)")
    @line_magic
    def experiment_view(self, line: str = ""):
        """Serve the viewer from this kernel on a free loopback port and show its link."""
        args = parse_argstring(self.experiment_view, line)
        from ._viewing import view

        return view(port=args.port)


def _scheduler_jobs() -> list:
    from .scheduler.core import get_scheduler

    return get_scheduler().jobs()


def _jobs(run_ids: list[str]) -> list:
    from .scheduler.core import get_scheduler

    scheduler = get_scheduler()
    jobs = []
    for run_id in run_ids:
        matches = [j for j in scheduler.jobs() if j.run_id.startswith(run_id)]
        if len(matches) != 1:
            raise UsageError(f"{run_id!r} matches {len(matches)} runs of this kernel")
        jobs.append(matches[0])
    return jobs


def _split_ids(run_ids: list[str]) -> tuple[list, list[str]]:
    """The jobs of this kernel the ids name (exactly or by a unique prefix), and the ids of no job here."""
    jobs, own, foreign = _scheduler_jobs(), [], []
    for run_id in run_ids:
        matches = [j for j in jobs if j.run_id == run_id] or [j for j in jobs if j.run_id.startswith(run_id)]
        if len(matches) > 1:
            raise UsageError(f"{run_id!r} matches {len(matches)} runs of this kernel; give more of the id")
        if matches:
            own.append(matches[0])
        else:
            foreign.append(run_id)
    return own, foreign


def _remote(run_id: str, action: str, value, via: str) -> str:
    """Do ``action`` on a run of any process (``nx.cancel``/``nx.set_priority``); the answer's line."""
    from .scheduler.api import _control

    try:
        return str(_control(run_id, action, value, None, 5.0, via))
    except NotebookExpError as exc:
        raise UsageError(str(exc)) from None


def _summary(jobs: list) -> str:
    counts: dict[str, int] = {}
    for job in jobs:
        counts[job.status.value] = counts.get(job.status.value, 0) + 1
    return f"{len(jobs)} run{'s' * (len(jobs) != 1)}: " + (", ".join(f"{n} {s}" for s, n in counts.items()) or "none")


def _wait_or_cancel(jobs: list) -> None:
    from .scheduler.api import wait

    try:
        wait(jobs)
    except KeyboardInterrupt:
        for job in jobs:
            job.cancel()
        wait(jobs, timeout=60)
        print(f"interrupted: {_summary(jobs)}")
    finally:
        from .widgets._ticker import ticker

        ticker.flush()  # the cards' final state goes out with this cell
