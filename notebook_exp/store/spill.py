"""Spills: writes the store could not take, kept on disk until a writer can.

When the store cannot be written (a full disk, an I/O error) and a run ends, the
process exits, or the writer's memory bound is reached, the writer moves what it
has queued into a spill: a folder ``<name>/`` in the spill folder holding

* ``ops.json``: the queued writes in order (statements with their parameters,
  events, calls into this package), where the outage came from, and per run the
  points it holds;
* ``metrics.arrow``: an Arrow IPC file, one record batch per metric batch
  (``code, step, t, value``; ``ops.json`` names each batch's run and keys).

A spill is written under a temporary name and renamed when complete, so readers
only ever see whole spills. The spill folder is ``<store file>.spill`` beside the
store, or the ``spill_dir`` setting; when that cannot be written either (it is on
the full disk), a folder under the system's temporary directory named after the
store. Every writer that opens the store (:func:`ingest`, called when the store is
prepared) ingests the spills of all those folders in name order, each in one
transaction that also records the spill's name in the ``spills`` table, so a
spill is ingested exactly once even if the process dies between that commit and
the removal of the folder. Each run with points in a spill gets ``runs.spilled``
counts and a ``spilled`` event. ``notebook-exp recover`` lists and ingests them
on demand.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import logging
import os
import shutil
import tempfile
from array import array
from datetime import datetime
from pathlib import Path

log = logging.getLogger("notebook_exp.store")

__all__ = ["SpillInfo", "folders", "ingest", "pending", "write"]

FORMAT = 1
_counter = itertools.count(1)


class SpillInfo:
    """A complete spill on disk: its folder, when and why it was written, what it holds."""

    def __init__(self, path: Path, header: dict) -> None:
        self.path = path
        self.name = path.name
        self.header = header
        self.written_at = header.get("written_at")
        self.reason = header.get("reason")
        self.pid = header.get("pid")
        self.runs: dict[str, int] = header.get("runs", {})
        self.points = sum(self.runs.values())
        self.ops = len(header.get("ops", []))

    def __repr__(self) -> str:
        return f"SpillInfo({self.name!r}, points={self.points}, ops={self.ops})"


def folders(store_path: Path, spill_dir: Path | None = None) -> list[Path]:
    """Where spills of ``store_path`` may be, first choice first."""
    store_path = Path(store_path)
    first = Path(spill_dir) if spill_dir is not None else store_path.with_name(store_path.name + ".spill")
    digest = hashlib.sha1(str(store_path).encode()).hexdigest()[:16]
    fallback = Path(tempfile.gettempdir()) / "notebook_exp-spill" / f"{store_path.stem}-{digest}"
    return [first, fallback]


# -- writing ----------------------------------------------------------------
def write(store_path: Path, spill_dir: Path | None, ops: list, reason: str, host: str) -> SpillInfo:
    """Write ``(seq, op)`` pairs as one spill; returns it. Tries each folder of
    :func:`folders` in turn; raises ``OSError`` (the last folder's) when none takes it.
    Calls that are not functions of this package cannot be written and are left out,
    with an error logged."""
    header, batches = _encode(ops, reason, host)
    error: OSError | None = None
    for folder in folders(store_path, spill_dir):
        try:
            return _write_into(folder, header, batches)
        except OSError as exc:
            log.warning("cannot write a spill into %s: %s", folder, exc)
            error = exc
    raise error  # type: ignore[misc]


def _write_into(folder: Path, header: dict, batches: list) -> SpillInfo:
    import pyarrow as pa

    folder.mkdir(parents=True, exist_ok=True)
    name = f"{header['written_at'].replace(':', '')}-{os.getpid()}-{next(_counter)}"
    tmp = folder / f".{name}.tmp"
    try:
        tmp.mkdir()
        if batches:
            schema = batches[0].schema
            with pa.OSFile(str(tmp / "metrics.arrow"), "wb") as sink, pa.ipc.new_file(sink, schema) as out:
                for batch in batches:
                    out.write_table(batch)
        with open(tmp / "ops.json", "w", encoding="utf-8") as fh:
            json.dump(header, fh)
            fh.flush()
            os.fsync(fh.fileno())
        final = folder / name
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return SpillInfo(final, header)


def _encode(ops: list, reason: str, host: str) -> tuple[dict, list]:
    from ._host import utcnow

    entries, batches, runs = [], [], {}
    for _seq, (kind, payload, args) in ops:
        if kind == "metrics":
            if not len(payload):
                continue
            entries.append({"kind": "metrics", "run_id": payload.run_id, "keys": [k for k, _p in payload.chunks],
                            "index": len(batches)})
            batches.append(_batch_table(payload))
            runs[payload.run_id] = runs.get(payload.run_id, 0) + len(payload)
        elif kind == "call":
            name = _function_name(payload)
            if name is None:
                log.error("a queued call (%r) cannot be spilled and is lost", payload)
                continue
            if name.endswith(":_recover_lost_runs"):
                continue  # a check, not data: every writer runs it when it opens the store
            entries.append({"kind": "call", "fn": name, "args": _enc(list(args or ()))})
        elif kind == "event":
            entries.append({"kind": "event", "row": _enc(list(payload))})
        else:
            entries.append({"kind": "sql", "sql": payload, "params": _enc(args)})
    header = {"format": FORMAT, "written_at": utcnow().isoformat(), "reason": reason, "pid": os.getpid(),
              "host": host, "runs": runs, "ops": entries}
    return header, batches


def _batch_table(batch):
    import numpy as np
    import pyarrow as pa

    from .._arrow import column

    flat = np.concatenate([np.frombuffer(points, dtype=np.float64) for _k, points in batch.chunks]).reshape(-1, 3)
    codes = np.repeat(np.arange(len(batch.chunks), dtype=np.int32), [len(p) // 3 for _k, p in batch.chunks])
    return pa.table({
        "code": column(codes, pa.int32()),
        "step": column(flat[:, 0].astype(np.int64), pa.int64()),
        "t": column(flat[:, 1], pa.float64()),
        "value": column(flat[:, 2], pa.float64()),
    })


def _function_name(fn) -> str | None:
    module, qualname = getattr(fn, "__module__", "") or "", getattr(fn, "__qualname__", "") or ""
    if not module.startswith("notebook_exp.") or "<" in qualname:
        return None
    return f"{module}:{qualname}"


def _enc(value):
    """JSON-safe form of statement parameters (datetimes and bytes tagged)."""
    if isinstance(value, datetime):
        return {"$dt": value.isoformat()}
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"$b64": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, (list, tuple)):
        return [_enc(v) for v in value]
    if isinstance(value, dict):
        return {"$map": {k: _enc(v) for k, v in value.items()}}
    return value


def _dec(value):
    if isinstance(value, list):
        return [_dec(v) for v in value]
    if isinstance(value, dict):
        if "$dt" in value:
            return datetime.fromisoformat(value["$dt"])
        if "$b64" in value:
            return base64.b64decode(value["$b64"])
        if "$map" in value:
            return {k: _dec(v) for k, v in value["$map"].items()}
    return value


# -- reading and ingesting --------------------------------------------------------
def pending(store_path: Path, spill_dir: Path | None = None) -> list[SpillInfo]:
    """Complete spills of ``store_path`` waiting to be ingested, oldest first."""
    found = []
    for folder in folders(store_path, spill_dir):
        if not folder.is_dir():
            continue
        for path in folder.iterdir():
            if path.name.startswith(".") or not (path / "ops.json").is_file():
                continue
            try:
                header = json.loads((path / "ops.json").read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                log.error("spill %s cannot be read (%s); left in place", path, exc)
                continue
            found.append(SpillInfo(path, header))
    return sorted(found, key=lambda info: info.name)


def _decode(info: SpillInfo) -> list:
    import importlib

    from ..models import MetricBatch

    header = info.header  # read once, by pending()
    tables = _read_batches(info.path / "metrics.arrow")
    ops = []
    for seq, entry in enumerate(header["ops"]):
        kind = entry["kind"]
        if kind == "metrics":
            ops.append((seq, ("metrics", MetricBatch(entry["run_id"], _chunks(tables[entry["index"]], entry["keys"])),
                              None)))
        elif kind == "call":
            module, qualname = entry["fn"].split(":")
            fn = importlib.import_module(module)
            for part in qualname.split("."):
                fn = getattr(fn, part)
            ops.append((seq, ("call", fn, tuple(_dec(entry["args"])))))
        elif kind == "event":
            ops.append((seq, ("event", tuple(_dec(entry["row"])), None)))
        else:
            ops.append((seq, ("sql", entry["sql"], _dec(entry["params"]))))
    return ops


def _read_batches(path: Path) -> list:
    if not path.exists():
        return []
    import pyarrow as pa

    with pa.memory_map(str(path)) as source:
        reader = pa.ipc.open_file(source)
        return [reader.get_batch(i) for i in range(reader.num_record_batches)]


def _chunks(table, keys: list[str]) -> list[tuple[str, array]]:
    import numpy as np

    codes = table.column("code").to_numpy()
    triples = np.column_stack([
        table.column("step").to_numpy().astype(np.float64), table.column("t").to_numpy(), table.column("value").to_numpy(),
    ])
    bounds = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1], True]) if len(codes) else np.array([0])
    chunks = []
    for start, end in zip(bounds[:-1], bounds[1:]):
        points = array("d")
        points.frombytes(np.ascontiguousarray(triples[start:end]).tobytes())
        chunks.append((keys[codes[start]], points))
    return chunks


def ingest(conn, store_path: Path, spill_dir: Path | None, host: str) -> list[SpillInfo]:
    """Ingest every pending spill into the attached store, each in its own
    transaction, exactly once; returns those ingested. A spill that cannot be
    applied is left in place with an error logged (the others still go in)."""
    from . import ops as store_ops
    from ._host import utcnow

    done = []
    for info in pending(store_path, spill_dir):
        seen = conn.execute("SELECT 1 FROM spills WHERE name = ?", [info.name]).fetchone()
        if seen:
            shutil.rmtree(info.path, ignore_errors=True)  # ingested before the folder could be removed
            continue
        try:
            ops = _decode(info)
            conn.execute("BEGIN")
            try:
                store_ops.apply(conn, ops)
                _record(conn, info, host, utcnow())
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        except Exception as exc:  # noqa: BLE001 - one bad spill must not keep the others out
            log.error("spill %s could not be ingested (%s); left in place", info.path, exc)
            continue
        shutil.rmtree(info.path, ignore_errors=True)
        log.warning("ingested spill %s: %d points of %d run(s), %d writes", info.name, info.points,
                    len(info.runs), info.ops)
        done.append(info)
    return done


def _record(conn, info: SpillInfo, host: str, now) -> None:
    conn.execute("INSERT INTO spills VALUES (?, ?, ?, ?, ?, ?, ?)",
                 [info.name, now, info.points, info.ops, info.pid, host, info.reason])
    for run_id, points in info.runs.items():
        detail = (f"{points} points were kept in spill {info.name} (written {info.written_at} UTC by process "
                  f"{info.pid}) while the store could not be written: {info.reason}; ingested {now:%Y-%m-%d %H:%M:%S} UTC")
        conn.execute("UPDATE runs SET spilled = coalesce(spilled, 0) + ? WHERE run_id = ?", [points, run_id])
        conn.execute("INSERT INTO events VALUES (?, ?, 'spilled', ?, ?, ?)", [run_id, now, detail, host, os.getpid()])
