"""Read an offline W&B run back, as the wandb sink wrote it, and check it against the store.

wandb 0.31 ships no Python reader of its transaction log any more (wandb-core, in Go,
reads it), and an offline run folder holds no ``config.yaml`` nor
``wandb-summary.json``: the ``run-<id>.wandb`` file is the whole record. It is a
LevelDB-style log (a 7-byte ``:W&B`` header, then 32 KiB blocks of records, each
``crc32 (IEEE, seeded with the record type) | length | type`` and a chunk) whose
payloads are ``wandb.proto.wandb_internal_pb2.Record`` messages; :func:`records`
reads it with wandb's own protobuf classes.

``verify(run, store_path, read_only)`` is what the sink contract suite calls.
"""

from __future__ import annotations

import json
import math
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

STEP_PREFIX = "notebook_exp/step/"
BLOCK = 32768
HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path) -> list:
    """Every ``Record`` of a ``.wandb`` file, in order; ``ValueError`` on a bad header or checksum."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    ident, magic, version = struct.unpack("<4sHB", data[:HEADER])
    if ident != b":W&B" or magic != 0xBEE1 or version != 0:
        raise ValueError(f"{path}: not a W&B transaction log ({ident!r}, {magic:#x}, {version})")
    out, pos, pending = [], HEADER, b""
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < HEADER:  # a block's tail too short for a header is padding
            pos += left
            continue
        crc, length, kind = struct.unpack("<IHB", data[pos:pos + HEADER])
        if kind == 0 and length == 0:  # zero padding up to the end of the block
            pos += left
            continue
        chunk = data[pos + HEADER:pos + HEADER + length]
        pos += HEADER + length
        if zlib.crc32(chunk, zlib.crc32(bytes([kind]))) & 0xFFFFFFFF != crc:
            raise ValueError(f"{path}: bad checksum at byte {pos}")
        if kind in (FULL, FIRST):
            pending = chunk
        else:
            pending += chunk
        if kind in (FULL, LAST):
            record = pb.Record()
            record.ParseFromString(pending)
            out.append(record)
    return out


def _key(item) -> str:
    return item.key if item.key else ".".join(item.nested_key)


def _row(items) -> dict[str, Any]:
    """A history row; media (logged as nested keys ``[key, field]``) become dicts."""
    row: dict[str, Any] = {}
    for item in items:
        path = [item.key] if item.key else list(item.nested_key)
        place = row
        for label in path[:-1]:
            place = place.setdefault(label, {})
        place[path[-1]] = json.loads(item.value_json)
    return row


@dataclass
class OfflineRun:
    """What one offline run folder says about its run."""

    folder: Path
    run_id: str = ""
    project: str = ""
    name: str = ""
    tags: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    metrics: dict[str, str] = field(default_factory=dict)  # defined metric -> its step metric
    files: list[str] = field(default_factory=list)
    exit_code: int | None = None

    def points(self) -> list[tuple[str, int, float]]:
        """``(key, step, value)`` of every scalar logged, ordered by key and step."""
        out = []
        for row in self.history:
            for key, value in row.items():
                if key.startswith(("_", "notebook_exp/")) or isinstance(value, dict):
                    continue
                out.append((key, int(row[STEP_PREFIX + key]), float(value)))
        return sorted(out, key=lambda p: (p[0], p[1]))

    def rich(self, key: str) -> list[tuple[int, dict]]:
        """``(step, value)`` of the media (dicts with a ``_type``) logged under ``key``."""
        return [(int(row[STEP_PREFIX + key]), row[key]) for row in self.history if isinstance(row.get(key), dict)]


def read_run(folder: Path) -> OfflineRun:
    """Replay the transaction log of one run folder."""
    (log,) = Path(folder).glob("run-*.wandb")
    run = OfflineRun(Path(folder))
    for record in records(log):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            r = record.run
            run.run_id, run.project, run.name, run.tags = r.run_id, r.project, r.display_name, list(r.tags)
            for item in r.config.update:
                run.config[_key(item)] = json.loads(item.value_json)
        elif kind == "config":
            for item in record.config.update:
                run.config[_key(item)] = json.loads(item.value_json)
            for item in record.config.remove:
                run.config.pop(_key(item), None)
        elif kind == "history":
            run.history.append(_row(record.history.item))
        elif kind == "summary":
            for item in record.summary.update:
                run.summary[_key(item)] = json.loads(item.value_json)
        elif kind == "metric" and record.metric.name:
            run.metrics[record.metric.name.replace("\\.", ".")] = record.metric.step_metric
        elif kind == "files":
            run.files.extend(f.path for f in record.files.files)
        elif kind == "exit":
            run.exit_code = record.exit.exit_code
    return run


def find_run(root: Path, run_id: str) -> OfflineRun:
    """The one offline run of ``run_id`` under ``<root>/wandb``."""
    folders = sorted((Path(root) / "wandb").glob(f"offline-run-*-{run_id}"))
    assert len(folders) == 1, f"expected one offline run of {run_id} under {root}/wandb, found {folders}"
    return read_run(folders[0])


def same_points(got, want) -> bool:
    """Equal keys and steps, values equal within float tolerance (NaN equals NaN)."""
    if [(k, s) for k, s, _ in got] != [(k, s) for k, s, _ in want]:
        return False
    return all(
        (math.isnan(a) and math.isnan(b)) or a == b or math.isclose(a, b, rel_tol=1e-12)
        for (_, _, a), (_, _, b) in zip(got, want)
    )


def store_points(read_only, store_path, run_id) -> list[tuple[str, int, float]]:
    rows = read_only(store_path, "SELECT key, step, value FROM metrics WHERE run_id=? ORDER BY key, step", [run_id])
    return [(k, int(s), float("nan") if v is None else float(v)) for k, s, v in rows]


def contract_points() -> list[tuple[str, int, float]]:
    """What the contract run logs (sorted by key and step), for when the store has no
    points of it (the contract suite runs each sink alone, without the duckdb sink)."""
    loss = [("loss", i, 1.0 / (i + 1)) for i in range(100)]
    acc = [("acc", i, float("nan") if i == 5 else i / 100) for i in range(100)]
    return acc + loss


def verify(run, store_path, read_only) -> None:
    """The sink contract run: params, tags, 2 keys x 100 steps (one NaN), text, histogram,
    image, artifact and a completed status, all in the offline W&B run; compared with
    the store where it holds them (the duckdb sink ran too), else with what was logged."""
    w = find_run(Path(store_path).parent, run.run_id)
    assert (w.run_id, w.project, w.name) == (run.run_id, run.experiment, run.name)
    assert {k: w.config[k] for k in run.params} == run.params == {"lr": 0.1, "bs": 8}
    assert w.tags == run.tags == ["t"]
    got = w.points()
    want = store_points(read_only, store_path, run.run_id) or contract_points()
    assert len(got) == 200 and same_points(got, want), (got[:5], want[:5])
    assert w.metrics["loss"] == STEP_PREFIX + "loss" and w.metrics["acc"] == STEP_PREFIX + "acc"
    ((_, text),) = w.rich("sample")
    table = json.loads((w.folder / "files" / text["path"]).read_text())
    assert table["columns"] == ["text"] and table["data"] == [["hello"]]
    ((_, hist),) = w.rich("w")
    assert hist["_type"] == "histogram" and sum(hist["values"]) == 1000
    assert len(hist["bins"]) == len(hist["values"]) + 1 and hist["bins"] == sorted(hist["bins"])
    stored = read_only(store_path, "SELECT bin_edges, counts FROM histograms WHERE run_id=?", [run.run_id])
    if stored:
        ((edges, counts),) = stored
        assert hist["values"] == list(counts) and all(math.isclose(a, b) for a, b in zip(hist["bins"], edges))
    ((_, image),) = w.rich("img")
    assert (image["_type"], image["width"], image["height"]) == ("image-file", 3, 2)
    assert (w.folder / "files" / image["path"]).is_file()
    assert (w.folder / "files" / "a.txt").read_text() == "x" and "a.txt" in w.files
    assert w.summary["notebook_exp/status"] == "completed" and w.exit_code == 0
