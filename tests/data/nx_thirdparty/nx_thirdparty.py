"""A third party's notebook_exp plugins: a CSV sink and a clipping processor."""

from array import array
from pathlib import Path

import numpy as np

from notebook_exp import MetricBatch
from notebook_exp.processors import Processor, ProcessorSettings
from notebook_exp.sinks import Sink, SinkSettings


class CsvSettings(SinkSettings):
    dir: Path | None = None


class CsvSink(Sink):
    """Writes key,step,value lines to <dir>/<run_id>.csv."""

    requires = ("duckdb",)  # starts after the duckdb sink
    capabilities = ("metrics",)
    Settings = CsvSettings

    def start_run(self, run):
        folder = self.settings.dir or Path(run.store_path).parent / "csv"
        folder.mkdir(parents=True, exist_ok=True)
        self._fh = open(folder / f"{run.run_id}.csv", "w")

    def log_metrics(self, batch):
        self._fh.writelines(f"{key},{step},{value!r}\n" for key, step, _ts, value in batch)

    def close(self):
        self._fh.close()


class ClipSettings(ProcessorSettings):
    high: float = 1.0


class Clip(Processor):
    """Clips values above ``high``."""

    Settings = ClipSettings

    def process(self, batch):
        chunks = []
        for key, points in batch.chunks:  # the batch is shared with other sinks: never changed in place
            rows = np.frombuffer(points, dtype=np.float64).reshape(-1, 3).copy()
            np.minimum(rows[:, 2], self.settings.high, out=rows[:, 2])
            chunks.append((key, array("d", rows.ravel())))
        return MetricBatch(batch.run_id, chunks)
