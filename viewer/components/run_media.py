"""The rich records of one run: texts, histograms over steps, images and artifacts."""

from __future__ import annotations

import html

import numpy as np
import pandas as pd
import panel as pn
from bokeh.models import ColumnDataSource, FixedTicker, LinearColorMapper
from bokeh.plotting import figure

from .common import format_value, message, title

__all__ = ["RunMedia", "histogram_figure"]

DEFAULT_HISTOGRAM_STEPS = 60


def histogram_figure(key: str, rows: pd.DataFrame, height: int = 260):
    """A heat strip per step: x = logged histograms in step order, y = bin, colour = share of counts."""
    rows = rows.tail(DEFAULT_HISTOGRAM_STEPS).reset_index(drop=True)
    left, right, bottom, top, share, steps = [], [], [], [], [], []
    for i, row in rows.iterrows():
        edges = np.asarray(row["bin_edges"], dtype="float64")
        counts = np.asarray(row["counts"], dtype="float64")
        if len(edges) != len(counts) + 1 or not len(counts):
            continue
        total = counts.max() or 1.0
        keep = counts > 0  # empty bins stay blank
        n = int(keep.sum())
        left += [i - 0.45] * n
        right += [i + 0.45] * n
        bottom += list(edges[:-1][keep])
        top += list(edges[1:][keep])
        share += list(counts[keep] / total)
        steps += [int(row["step"])] * n
    fig = figure(height=height, sizing_mode="stretch_width", title=key, tools="pan,wheel_zoom,reset,save")
    mapper = LinearColorMapper(palette="Viridis256", low=0, high=1)
    source = ColumnDataSource({"left": left, "right": right, "bottom": bottom, "top": top,
                               "share": share, "step": steps})
    fig.quad(left="left", right="right", bottom="bottom", top="top", source=source,
             fill_color={"field": "share", "transform": mapper}, line_color=None, name="nx-histogram")
    ticks = list(range(0, len(rows), max(1, len(rows) // 10)))
    fig.xaxis.ticker = FixedTicker(ticks=ticks)
    fig.xaxis.major_label_overrides = {i: str(int(rows["step"].iloc[i])) for i in ticks}
    fig.xaxis.axis_label = "step"
    return fig


class RunMedia:
    """Texts, histograms, images and artifact downloads of the shown run."""

    def __init__(self, state) -> None:
        self.state = state
        self.texts = pn.widgets.Tabulator(
            pd.DataFrame({"key": [], "step": [], "text": []}), show_index=False, disabled=True,
            selectable=False, sizing_mode="stretch_width", layout="fit_data_stretch",
            formatters={"key": {"type": "plaintext"}, "text": {"type": "textarea"}},
            css_classes=["nx-texts"], pagination="local", page_size=20,
        )
        self.histograms = pn.Column(sizing_mode="stretch_width")
        self.images = pn.FlexBox()
        self.artifacts = pn.Column(sizing_mode="stretch_width", css_classes=["nx-artifacts"])

    def panels(self) -> dict[str, pn.viewable.Viewable]:
        return {
            "Texts": self.texts,
            "Histograms": self.histograms,
            "Images": self.images,
            "Artifacts": self.artifacts,
        }

    def show(self, run_id: str) -> None:
        """Read the run's media and show them when they arrive."""
        self.state.reads.submit("media", lambda: self.state.run_media(run_id), self._render)

    def _render(self, media: dict) -> None:
        self._texts(media.get("texts"))
        self._histograms(media.get("histograms"))
        self._images(media.get("images"))
        self._artifacts(media.get("artifacts"))

    def _texts(self, texts) -> None:
        frame = texts[["key", "step", "text"]] if texts is not None else pd.DataFrame({"key": [], "step": [], "text": []})
        self.texts.titles = {"key": "key", "step": "step", "text": "text"}
        self.texts.value = frame.reset_index(drop=True)

    def _histograms(self, histograms) -> None:
        if histograms is None or not len(histograms):
            self.histograms.objects = [pn.pane.HTML(message("No histograms logged."))]
            return
        self.histograms.objects = [
            pn.pane.Bokeh(histogram_figure(key, rows), sizing_mode="stretch_width")
            for key, rows in histograms.groupby("key", sort=True)
        ]

    def _images(self, images) -> None:
        if images is None or not len(images):
            self.images.objects = [pn.pane.HTML(message("No images logged."))]
            return
        cards = []
        for _, row in images.iterrows():
            png = row["png"]
            if png is None:
                continue
            caption = pn.pane.HTML(f"<small>{title(row['key'])} \u00b7 step {int(row['step'])}</small>")
            width = int(min(max(int(row["width"] or 64), 64), 320))
            cards.append(pn.Column(pn.pane.PNG(bytes(png), width=width), caption))
        self.images.objects = cards

    def _artifacts(self, artifacts) -> None:
        if artifacts is None or not len(artifacts):
            self.artifacts.objects = [pn.pane.HTML(message("No artifacts logged."))]
            return
        rows = []
        for _, row in artifacts.iterrows():
            path = self.state.artifact_file(row["path"])
            size = format_value(row["size"])
            text = pn.pane.HTML(f"{html.escape(str(row['name']))} <small>({html.escape(size)} bytes)</small>")
            if path is None:
                rows.append(pn.Row(text, pn.pane.HTML(message("file missing or outside the store folder"))))
                continue
            download = pn.widgets.FileDownload(file=str(path), filename=str(row["name"]),
                                               label=f"Download {row['name']}", embed=False)
            rows.append(pn.Row(text, download))
        self.artifacts.objects = rows
