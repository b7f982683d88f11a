"""The Weights & Biases sink: one W&B run per notebook_exp run, offline by default.

Registered as the ``wandb`` entry point (``pip install 'notebook-exp[wandb]'``).
wandb is imported in ``start_run``, never when this module is imported.

Where things go
    ``wandb.init(project=<experiment>, name=<run name>, id=<run id>, config=<params>,
    tags=<tags>)``, in ``offline`` mode unless the ``mode`` setting or ``WANDB_MODE``
    says otherwise, so nothing touches the network and no login is asked for. The
    run's folder is ``<root>/wandb/offline-run-<time>-<run id>/`` (``run-<id>.wandb``
    is its transaction log, ``files/`` its media and saved files), where ``<root>``
    is the ``dir`` setting, else ``WANDB_DIR``, else the store's folder. Upload it
    later with ``wandb sync <run folder>``.

Steps
    A W&B run has one step counter (``_step``) that only goes up, while each
    notebook_exp key counts its own steps. So the sink never passes ``step=``: each
    key ``k`` gets a step metric ``notebook_exp/step/<k>`` (``define_metric(k,
    step_metric=...)``, hidden from the automatic charts), logged beside every
    value of ``k``; charts of ``k`` plot against its own steps, and ``_step`` just
    numbers the rows. A batch is logged as one row per step (all keys at that step
    together, steps ascending; a key logged twice at one step gets a second row),
    with ``_timestamp`` the time the points were logged. Keys starting with
    ``notebook_exp/`` are this sink's own. W&B reads dots in ``define_metric``
    names as nesting: the sink escapes them, and the values are logged under the
    literal key.

Other records
    Text is a one-cell ``wandb.Table`` (column ``text``), histograms
    ``wandb.Histogram`` (merged to at most 512 bins, W&B's limit), images
    ``wandb.Image``, each in a row with its key's step metric; an artifact is hard
    linked (else copied) into the run's ``files/`` under its name and ``run.save``-d.
    The end sets the summary field ``notebook_exp/status`` (and ``notebook_exp/error``)
    and finishes the run with exit code 0 (completed), 1 (failed) or 130 (cancelled);
    ``close`` finishes a run that never got ``end_run`` with exit code 1. Either
    returns once wandb-core has closed the run's transaction log (``run.finish``
    returns before that), so the run folder is complete when notebook_exp's run
    has ended. ``flush`` does nothing: wandb has no call that makes a live run's
    log durable (wandb-core writes it in 32 KiB blocks).

Concurrency and output
    Runs are created with ``reinit="create_new"`` (several may be live at once,
    from different threads; ``wandb.init`` itself is serialized) and only ever
    logged through their ``Run`` object, never ``wandb.log``. Each run is
    ``silent`` (no banners; wandb's warnings and errors still show) and captures no
    console output, system metrics, git state or code. The wandb-core service
    process this starts is stopped by a shutdown step (``notebook_exp.testing.
    shutdown()``, interpreter exit), after the sink workers ended.
"""

from __future__ import annotations

import io
import logging
import math
import os
import shutil
import struct
import sys
import threading
import time
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field

from .. import _exit
from ..models import MetricBatch, RunInfo, RunStatus
from .base import Sink, SinkSettings

__all__ = ["WandbSettings", "WandbSink"]

#: Prefix of the step metric of each key, and of the sink's own summary fields.
STEP_PREFIX = "notebook_exp/step/"
STATUS_KEY = "notebook_exp/status"
ERROR_KEY = "notebook_exp/error"
#: Exit code given to ``run.finish`` for each terminal status.
EXIT_CODES = {RunStatus.COMPLETED: 0, RunStatus.FAILED: 1, RunStatus.CANCELLED: 130}
DEFAULT_EXIT_CODE = 1  # a run closed without end_run
MAX_BINS = 512  # wandb.Histogram refuses more
WRITE_TIMEOUT = 30.0  # seconds the end waits for wandb-core to close the run's log
LOG_BLOCK, LOG_HEADER = 32768, 7  # the transaction log's block and chunk-header sizes
SHUTDOWN_ORDER = 27  # after the sink workers stop (25), before servers and stores

_log = logging.getLogger("notebook_exp.sinks")
_RUN_ID_RESERVED = str.maketrans({c: "-" for c in ":;,#?/' \t"})
_PROJECT_RESERVED = str.maketrans({c: "-" for c in "/\\#?%:"})
_init_lock = threading.Lock()  # wandb.init sets up process-wide state (its service, settings): one at a time
_used = False  # whether a run started since the last teardown


class WandbSettings(SinkSettings):
    """Settings of the wandb sink, from ``NOTEBOOK_EXP_WANDB_<FIELD>``, ``[plugins.wandb]``
    or the run's options."""

    project: str | None = Field(None, description="W&B project; None: the run's experiment.")
    entity: str | None = Field(None, description="W&B entity (user or team); None: wandb's default.")
    mode: Literal["offline", "online", "shared", "disabled"] | None = Field(
        None, description="wandb mode; None: WANDB_MODE if set, else offline (nothing leaves the machine)."
    )
    dir: Path | None = Field(
        None,
        description="Folder whose wandb/ sub-folder holds the runs; None: WANDB_DIR if set, else the store's folder.",
    )


class WandbSink(Sink):
    """Writes each run to a W&B run (offline by default: ``wandb sync`` uploads it later)."""

    name = "wandb"
    capabilities = ("metrics", "params", "tags", "text", "histograms", "images", "artifacts", "status")
    # busy in Python, but measured (benchmarks/bench_sinks.py) a loop on 2 cores ran faster with it on a
    # thread than in the sink host: opt in with process=True (sinks._host)
    isolated = False
    libraries = ("wandb",)
    extra = "wandb"
    Settings: ClassVar[type[SinkSettings]] = WandbSettings
    breaker_failures = 5

    def __init__(self) -> None:
        self.run = None  # the wandb Run
        self._defined: set[str] = set()
        self._exit_code = DEFAULT_EXIT_CODE
        self._partial: MetricBatch | None = None  # the batch a failed log_metrics left half logged
        self._done = 0  # how many of its rows were logged

    # -- start -------------------------------------------------------------------
    def start_run(self, run: RunInfo) -> None:
        global _used
        import wandb

        settings = self.settings
        options: dict[str, Any] = {
            "silent": True,  # no banners; wandb.termwarn/termerror still print
            "console": "off",
            "x_disable_stats": True,
            "x_disable_machine_info": True,
            "disable_git": True,
            "save_code": False,
            "x_save_requirements": False,
        }
        mode = _mode(settings)
        if mode is not None:
            options["mode"] = mode
        root = _root(settings, run)
        if root is not None:
            root.mkdir(parents=True, exist_ok=True)
        _exit.on_shutdown(teardown, SHUTDOWN_ORDER, name=f"{__name__}.teardown")
        with _init_lock:
            _used = True
            self.run = wandb.init(
                project=_project(settings.project or run.experiment),
                entity=settings.entity,
                name=run.name,
                id=wandb_id(run.run_id),
                config=dict(run.params),
                tags=list(run.tags),
                dir=str(root) if root is not None else None,
                reinit="create_new",
                settings=wandb.Settings(**options),
            )

    def log_params(self, params: dict[str, Any]) -> None:
        self.run.config.update(params, allow_val_change=True)

    def set_tags(self, tags: list[str]) -> None:
        self.run.tags = tuple(tags)

    # -- metrics -----------------------------------------------------------------
    def log_metrics(self, batch: MetricBatch) -> None:
        rows = self._rows(batch)
        # A retried call (the same batch, after a failure) goes on where the last one stopped.
        done = self._done if self._partial is batch else 0
        self._partial, self._done = batch, done
        log = self.run.log
        for row in rows[done:]:
            log(row)
            self._done += 1
        self._partial = None

    def _rows(self, batch: MetricBatch) -> list[dict[str, Any]]:
        """One ``run.log`` row per step (steps ascending); the n-th repeat of a key's
        step goes to the n-th row of that step."""
        rows: dict[tuple[int, int], dict[str, Any]] = {}
        for key, points in batch.chunks:
            self._define(key)
            step_key = STEP_PREFIX + key
            seen: dict[int, int] = {}
            for i in range(0, len(points), 3):
                step, ts, value = int(points[i]), points[i + 1], points[i + 2]
                nth = seen[step] = seen.get(step, -1) + 1
                row = rows.get((step, nth))
                if row is None:
                    row = rows[(step, nth)] = {"_timestamp": ts}
                elif ts > row["_timestamp"]:
                    row["_timestamp"] = ts
                row[key] = value
                row[step_key] = step
        return [rows[place] for place in sorted(rows)]

    def _define(self, key: str) -> None:
        """Give ``key`` its own step metric (once per key and run)."""
        if key in self._defined:
            return
        self._defined.add(key)
        step_key = STEP_PREFIX + key
        if "*" in key:  # define_metric reads '*' as a glob: the key still gets its steps logged
            return
        self.run.define_metric(_escape(step_key), hidden=True)
        self.run.define_metric(_escape(key), step_metric=step_key)

    def _log_rich(self, key: str, step: int, ts: float, value: Any) -> None:
        self._define(key)
        self.run.log({key: value, STEP_PREFIX + key: step, "_timestamp": ts})

    # -- rich records --------------------------------------------------------------
    def log_text(self, key: str, step: int, ts: float, text: str) -> None:
        import wandb

        self._log_rich(key, step, ts, wandb.Table(columns=["text"], data=[[text]]))

    def log_histogram(self, key: str, step: int, ts: float, bin_edges: list[float], counts: list[int]) -> None:
        import wandb

        edges, counts = coarsen(list(bin_edges), list(counts), MAX_BINS)
        self._log_rich(key, step, ts, wandb.Histogram(np_histogram=(counts, edges)))

    def log_image(self, key: str, step: int, ts: float, png: bytes, width: int, height: int) -> None:
        import wandb
        from PIL import Image

        with Image.open(io.BytesIO(png)) as image:
            image.load()
            self._log_rich(key, step, ts, wandb.Image(image))

    def log_artifact(self, name: str, path: str) -> None:
        files = Path(self.run.dir)
        dest = files / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.unlink(missing_ok=True)
        try:
            os.link(path, dest)  # the store keeps its copy; the run folder gets the same file
        except OSError:
            shutil.copy2(path, dest)
        self.run.save(str(dest), base_path=str(files), policy="now", glob=False)

    # -- end -----------------------------------------------------------------------
    def end_run(self, status: RunStatus, error: str | None) -> None:
        status = RunStatus(status)
        self._exit_code = EXIT_CODES.get(status, DEFAULT_EXIT_CODE)
        self.run.summary[STATUS_KEY] = status.value
        if error:
            self.run.summary[ERROR_KEY] = error
        self._finish()

    def close(self) -> None:
        self._finish()

    def _finish(self) -> None:
        run, self.run = self.run, None
        if run is None:
            return
        log = _transaction_log(run)
        run.finish(exit_code=self._exit_code)
        if log is not None and not wait_written(log, WRITE_TIMEOUT):
            _log.warning("wandb sink: %s was not complete %.0f s after the run finished", log, WRITE_TIMEOUT)


def teardown() -> None:
    """Stop wandb's service process if this sink started runs (a shutdown step; every
    run of this sink has been finished by then)."""
    global _used
    if not _used or "wandb" not in sys.modules:
        return
    with _init_lock:
        _used = False
        try:
            sys.modules["wandb"].teardown()
        except AssertionError as exc:  # wandb's own exit hook got there first: nothing left to stop
            if "torn down" not in str(exc):
                raise


def _transaction_log(run) -> Path | None:
    settings = run.settings
    if settings.mode == "disabled" or settings.x_skip_transaction_log:
        return None
    return Path(settings.sync_file)


def wait_written(path: Path, timeout: float) -> bool:
    """Wait until wandb-core has closed the run's transaction log (``run.finish``
    returns before it does: the file's last block is written when the stream
    closes); False if it is not within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    delay = 0.002
    while not _ends_with_exit(path):
        if time.monotonic() > deadline:
            return False
        time.sleep(delay)
        delay = min(delay * 2, 0.1)
    return True


def _ends_with_exit(path: Path) -> bool:
    """Whether the last record of the transaction log at ``path`` is the run's exit
    (the log is LevelDB-style: 32 KiB blocks of ``crc | length | type`` chunks)."""
    from wandb.proto import wandb_internal_pb2 as pb

    try:
        with open(path, "rb") as fh:
            size = fh.seek(0, os.SEEK_END)
            start = max(LOG_HEADER, (size - 1) // LOG_BLOCK * LOG_BLOCK)
            fh.seek(start)
            tail = fh.read()
    except OSError:
        return False
    pos, last = 0, None
    while len(tail) - pos >= LOG_HEADER and LOG_BLOCK - (start + pos) % LOG_BLOCK >= LOG_HEADER:
        _crc, length, kind = struct.unpack_from("<IHB", tail, pos)
        if kind == 0 and length == 0:  # zero padding to the end of the block
            break
        if pos + LOG_HEADER + length > len(tail):
            return False  # a chunk not fully written yet
        last = (kind, tail[pos + LOG_HEADER:pos + LOG_HEADER + length])
        pos += LOG_HEADER + length
    if last is None or last[0] != 1:  # 1: a record in one chunk
        return False
    try:
        return pb.Record.FromString(last[1]).WhichOneof("record_type") == "exit"
    except Exception:  # noqa: BLE001 - a torn chunk: not written yet
        return False


def wandb_id(run_id: str) -> str:
    """The W&B run id of a notebook_exp run: its id, W&B's reserved characters as ``-``."""
    return run_id.strip().translate(_RUN_ID_RESERVED) or "-"


def coarsen(edges: list[float], counts: list[int], most: int) -> tuple[list[float], list[int]]:
    """Merge neighbouring bins (``k`` at a time) until at most ``most`` remain."""
    if len(counts) <= most:
        return edges, counts
    k = math.ceil(len(counts) / most)
    merged = [sum(counts[i:i + k]) for i in range(0, len(counts), k)]
    return edges[::k][: len(merged)] + [edges[-1]], merged


def _escape(name: str) -> str:
    return name.replace(".", "\\.")


def _project(name: str) -> str:
    return name.translate(_PROJECT_RESERVED)[:128]


def _mode(settings: WandbSettings) -> str | None:
    if settings.mode is not None:
        return settings.mode
    return None if os.environ.get("WANDB_MODE") else "offline"  # None: wandb reads WANDB_MODE


def _root(settings: WandbSettings, run: RunInfo) -> Path | None:
    if settings.dir is not None:
        return settings.dir
    if os.environ.get("WANDB_DIR") or not run.store_path:
        return None  # wandb's own choice
    return Path(run.store_path).parent
