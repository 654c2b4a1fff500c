"""A picture of a prediction, like the TEA paper's Fig. 5: a strip of frames, the narratives at
their times, and per query the start / end probability curves, the highlight score, the predicted
moments, the true moment and a second model's prediction, all on one time axis (seconds).

matplotlib is imported inside `plot_timeline` (Agg backend, no display needed), so that predicting
without a plot does not need it.
"""

import dataclasses
import textwrap

import numpy as np

COLORS = {"start": "#1f77b4", "end": "#d62728", "highlight": "#2ca02c", "truth": "#2ca02c",
          "main": "#ff7f0e", "compare": "#7f7f7f"}


@dataclasses.dataclass
class Curves:
  """One model's answer to one query: (v_len,) start / end probabilities and highlight score, and
  its moments (dicts with start, end, probability; best first)."""

  label: str
  start_prob: np.ndarray
  end_prob: np.ndarray
  highlight: np.ndarray
  moments: list[dict]


@dataclasses.dataclass
class QueryPanel:
  """What is drawn for one query."""

  query: str
  main: Curves
  compare: Curves | None = None
  truth: tuple[float, float] | None = None


def snippet_edges(v_len: int, duration: float) -> np.ndarray:
  """(v_len + 1,) snippet boundaries: snippet k covers [k d / v_len, (k + 1) d / v_len)."""
  return np.arange(v_len + 1) * duration / v_len


def plot_timeline(path: str, duration: float, title: str, panels: list[QueryPanel],
                  frames: list[tuple[float, np.ndarray]] = (),
                  narratives: list[tuple[float, str]] = ()) -> None:
  """Writes the timeline of `panels` (one per query) as a PNG at `path`."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  from tea_jax.files import atomic_write  # pylint: disable=import-outside-toplevel
  slots = len(frames) or 8
  rows = ([("frames", 1.5)] if frames else []) + ([("narratives", 1.3)] if narratives else [])
  for panel in panels:
    rows += [("curves", 1.9), ("moments", 0.45 + 0.28 * _bar_rows(panel))]
  height = sum(h for _, h in rows) + 0.9
  fig = plt.figure(figsize=(14, height))
  grid = fig.add_gridspec(len(rows), 1, height_ratios=[h for _, h in rows], hspace=0.45,
                          top=1 - 0.55 / height, bottom=0.45 / height)
  axes = [fig.add_subplot(grid[i, 0]) for i in range(len(rows))]
  kinds = iter(zip((kind for kind, _ in rows), axes))
  if frames:
    _draw_frames(next(kinds)[1], frames, duration)
  if narratives:
    _draw_narratives(next(kinds)[1], narratives, duration, slots)
  for panel in panels:
    _draw_curves(next(kinds)[1], panel, duration)
    _draw_moments(next(kinds)[1], panel, duration)
  for ax in axes:  # after drawing: imshow resets the limits to its image
    ax.set_xlim(0, duration)
    ax.tick_params(labelbottom=ax is axes[-1])
  axes[-1].set_xlabel("time (s)")
  fig.suptitle(title, fontsize=11, y=1 - 0.15 / height)
  atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100, bbox_inches="tight"),
               binary=True)
  plt.close(fig)


def _bar_rows(panel: QueryPanel) -> int:
  """Bars of a panel's moments row: truth, top-k, the compared model's best."""
  return len(panel.main.moments) + (panel.truth is not None) + (
      len(panel.compare.moments[:1]) if panel.compare else 0)


def _draw_frames(ax, frames, duration: float) -> None:
  """Each frame from its time to the next frame's (the last one to the end)."""
  times = [t for t, _ in frames] + [duration]
  for (t, image), end in zip(frames, times[1:]):
    pad = 0.02 * (end - t)
    ax.imshow(image, extent=(t + pad, max(end - pad, t + 2 * pad), 0, 1), aspect="auto",
              interpolation="bilinear")
  ax.set_ylim(0, 1)
  ax.set_yticks([])
  ax.set_ylabel("frames", rotation=0, ha="right", va="center")


def _draw_narratives(ax, narratives, duration: float, slots: int) -> None:
  """A tick at every narrative's time, and in each slot (as wide as a frame above) the text of the
  first narrative whose time falls in it, wrapped to the slot."""
  times = np.array([t for t, _ in narratives])
  ax.vlines(times, 0.9, 1.0, color="k", linewidth=0.8)
  width = duration / slots
  chars = max(12, int(118 / slots))  # about the characters of 7-point text across one slot
  for k in range(slots):
    inside = np.flatnonzero((times >= k * width) & (times < (k + 1) * width))
    if not len(inside):
      continue
    t, text = narratives[int(inside[0])]
    lines = textwrap.wrap(f"{t:.1f}s: {text}", chars)
    if len(lines) > 6:
      lines = lines[:5] + [lines[5][:chars - 3] + "..."]
    ax.text(k * width + 0.03 * width, 0.85, "\n".join(lines), fontsize=7, va="top", ha="left")
  ax.set_ylim(0, 1)
  ax.set_yticks([])
  ax.set_ylabel("narratives", rotation=0, ha="right", va="center")


def _draw_curves(ax, panel: QueryPanel, duration: float) -> None:
  """p_start and p_end (left axis) and the highlight score (right axis, 0..1) of the main model
  (solid) and the compared one (dashed), each value over its snippet's time span."""
  twin = ax.twinx()
  top = 0.0
  for curves, style in ((panel.main, "-"), (panel.compare, "--")):
    if curves is None:
      continue
    edges = snippet_edges(len(curves.start_prob), duration)
    line = {"baseline": None, "linestyle": style, "linewidth": 1.6 if style == "-" else 1.1}
    ax.stairs(curves.start_prob, edges, color=COLORS["start"], label=f"p_start {curves.label}",
              **line)
    ax.stairs(curves.end_prob, edges, color=COLORS["end"], label=f"p_end {curves.label}", **line)
    twin.stairs(curves.highlight, edges, color=COLORS["highlight"], alpha=0.7,
                label=f"highlight {curves.label}", **{**line, "linewidth": 1.0})
    top = max(top, float(np.max(curves.start_prob)), float(np.max(curves.end_prob)))
  if panel.truth is not None:
    ax.axvspan(*panel.truth, color=COLORS["truth"], alpha=0.12, linewidth=0)
  ax.set_ylim(0, 1.15 * top or 1)
  twin.set_ylim(0, 1.05)
  ax.set_ylabel("probability")
  twin.set_ylabel("highlight")
  ax.set_title(f'"{panel.query}"', fontsize=10, loc="left")
  handles = ax.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0]
  ax.legend(handles=handles, fontsize=7, loc="lower right", bbox_to_anchor=(1.0, 1.0),
            ncol=len(handles), frameon=False, borderaxespad=0.1)


def _draw_moments(ax, panel: QueryPanel, duration: float) -> None:
  """One bar per moment: the truth, the main model's top-k (best first, fainter with rank) and the
  compared model's best, each labelled with its seconds (and probability)."""
  bars = []
  if panel.truth is not None:
    bars.append(("truth", panel.truth, COLORS["truth"], 1.0, ""))
  for rank, m in enumerate(panel.main.moments):
    bars.append((f"{panel.main.label} #{rank + 1}", (m["start"], m["end"]), COLORS["main"],
                 1.0 if rank == 0 else 0.45, f"  p={m['probability']:.3f}"))
  if panel.compare is not None and panel.compare.moments:
    m = panel.compare.moments[0]
    bars.append((f"{panel.compare.label} #1", (m["start"], m["end"]), COLORS["compare"], 1.0,
                 f"  p={m['probability']:.3f}"))
  for row, (label, (start, end), color, alpha, note) in enumerate(bars):
    y = len(bars) - 1 - row
    ax.barh(y, end - start, left=start, height=0.7, color=color, alpha=alpha)
    text = f"{start:.2f}-{end:.2f}s{note}"
    if end < 0.7 * duration:  # the label after the bar, else before it, else inside it
      ax.text(end, y, " " + text, va="center", ha="left", fontsize=7)
    elif start > 0.3 * duration:
      ax.text(start, y, text + "  ", va="center", ha="right", fontsize=7)
    else:
      ax.text((start + end) / 2, y, text, va="center", ha="center", fontsize=7)
  ax.set_yticks(range(len(bars)), [b[0] for b in reversed(bars)], fontsize=8)
  ax.set_ylim(-0.6, len(bars) - 0.4)
