"""Download the selected runs' metrics (every point, long form) as CSV or Parquet."""

from __future__ import annotations

import io

import panel as pn

__all__ = ["MetricsExport"]


class MetricsExport:
    """A format choice and a FileDownload whose callback queries at click time
    (off the server's event loop, retrying a while if the store is busy)."""

    def __init__(self, state) -> None:
        self.state = state
        self.format = pn.widgets.RadioButtonGroup(label="format", options=["csv", "parquet"], value="csv")
        self.download = pn.widgets.FileDownload(
            callback=self._download, filename="metrics.csv", label="Download metrics",
            color="default", css_classes=["nx-export"], width=220,
        )
        self.format.param.watch(self._on_format, "value")

    def panel(self) -> pn.viewable.Viewable:
        return pn.Row(self.format, self.download)

    def _on_format(self, event) -> None:
        self.download.filename = f"metrics.{event.new}"

    def _file(self) -> io.BytesIO:
        """The selected runs' metrics in the chosen format (reads the store: call it off the loop)."""
        return io.BytesIO(self.state.export_metrics(list(self.state.selected), self.format.value))

    async def _download(self) -> io.BytesIO:
        return await self.state.reads.call(self._file)
