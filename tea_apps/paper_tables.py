"""The paper's tables with our numbers beside them: mean +- std over seeds read from the runs'
metrics.json, as Markdown, CSV and (Figs. 3 and 4) PNG."""

from __future__ import annotations

import csv
import dataclasses
import io
import statistics

from tea_apps.paper_runs import RunSpec, Table, alpha_text, published
from tea_jax import files
from tea_jax import workdir as workdir_files

METRICS = ("r1@0.5", "r1@0.7", "miou")
METRIC_LABELS = {"r1@0.5": "R1@0.5", "r1@0.7": "R1@0.7", "miou": "mIoU"}
NOT_RUN = "not finished"


@dataclasses.dataclass
class Cell:
  """Our numbers of one row and column: one value per finished seed."""

  values: dict[str, list[float]]  # metric -> values of the finished seeds, in seed order
  seeds: list[int]  # the finished seeds
  asked: int  # how many seeds the row has
  pairs: list[str]  # "N of M queries" evaluated, for splits whose metrics carry a note
  protocols: dict[str, str]  # protocol -> metrics.json's selection text

  def mean_std(self, metric: str) -> tuple[float, float | None]:
    """Mean and sample standard deviation (None for one seed)."""
    values = self.values[metric]
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def cell(runs: list[RunSpec], split: str) -> Cell:
  """Our numbers of `split` over the runs (seeds) that have finished."""
  out = Cell({m: [] for m in METRICS}, [], len(runs), [], {})
  for run in runs:
    try:
      metrics = workdir_files.read_metrics(run.workdir)
    except FileNotFoundError:
      continue
    summary = metrics["splits"][split]
    out.seeds.append(run.seed)
    for m in METRICS:
      out.values[m].append(float(summary[m]))
    out.protocols[metrics["protocol"]] = metrics.get("selection", "")
    if summary.get("note"):
      queries = summary["queries"]  # as tea_jax.evaluate writes it: queries evaluated, annotated
      text = f"{queries['evaluated']} of {queries['annotated']} queries"
      if text not in out.pairs:
        out.pairs.append(text)
  return out


def paper_text(values) -> str:
  """The paper's R1@0.5 / R1@0.7 / mIoU, or a dash where it gives no number."""
  return " / ".join(f"{v:.2f}" for v in values) if values else "\u2014"


def ours_text(c: Cell) -> str:
  """Mean +- std per metric, with the seeds counted when some have not finished and the pairs
  when a split was not evaluated whole."""
  if not c.seeds:
    return NOT_RUN
  parts = []
  for m in METRICS:
    mean, std = c.mean_std(m)
    parts.append(f"{mean:.2f}" + (f" \u00b1 {std:.2f}" if std is not None else ""))
  text = " / ".join(parts)
  if len(c.seeds) < c.asked:
    text += f" ({len(c.seeds)} of {c.asked} seeds)"
  if c.pairs:
    text += f" [{'; '.join(c.pairs)} evaluated]"
  return text


@dataclasses.dataclass
class Rendered:
  """A table's Markdown, CSV lines and cells."""

  markdown: str
  rows: list[dict]  # the CSV's rows
  cells: dict[tuple[str, str], Cell]  # (our row label, column key) -> cell


def _paper_values(table: Table) -> dict[str, dict]:
  """paper row -> {column key: [3 values] or None}."""
  return {row["row"]: row["values"] for row in table.paper["rows"]}


def _header(table: Table, cells: dict, seeds: tuple[int, ...], demo: bool) -> list[str]:
  """The lines above a table: what is compared, the protocol, the caveats."""
  protocols = {}
  for c in cells.values():
    protocols.update(c.protocols)
  columns = ", ".join(c.label for c in table.columns)
  lines = [f"### {table.title}", "",
           f"R1@0.5 / R1@0.7 / mIoU (%) on {columns}. tea_jax: mean \u00b1 sample standard "
           f"deviation over seeds {', '.join(map(str, seeds))} (a single seed has no deviation)."]
  if protocols:
    for protocol, selection in sorted(protocols.items()):
      lines.append(f"Protocol (metrics.json): **{protocol}**: {selection}.")
    if "trainfree" in protocols:
      lines.append("The train-free row has no checkpoint and no seeds: one deterministic run per "
                   "benchmark, nothing selected on any split.")
    if "val" in protocols:
      lines.append("The paper's EMB\u2020 and TEA numbers come from EMB's training loop, which "
                   "selects on the test split (`--protocol reference`); runs under `val` select "
                   "on a validation split and are expected to be lower.")
    elif "reference" in protocols:
      lines.append("The paper's EMB\u2020 and TEA numbers come from the same loop (EMB's code), "
                   "which selects on the test split: optimistic for both.")
  else:
    lines.append("No run has finished yet: no protocol to name.")
  if table.paper.get("note"):
    lines.append(f"Paper: {table.paper['note']}")
  if demo:
    lines.append("Demo: the synthetic benchmark of configs/demo.py stands in for every benchmark "
                 "(its test_ood, novel_word and novel_composition splits for the OOD splits); the "
                 "paper's numbers are for the real benchmarks and only show the layout.")
  return lines + [""]


def _csv_row(table, label, paper_row, column, metric, paper, c: Cell | None) -> dict:
  """One CSV line: a metric of a row and column, the paper's value and ours."""
  row = {"table": table.name, "row": label, "paper_row": paper_row or "", "column": column.key,
         "metric": metric, "paper": "" if paper is None else f"{paper:.2f}", "mean": "",
         "std": "", "n": 0, "seeds": "", "protocol": "", "pairs": ""}
  if c is not None and c.seeds:
    mean, std = c.mean_std(metric)
    row.update(mean=f"{mean:.4f}", std="" if std is None else f"{std:.4f}", n=len(c.seeds),
               seeds=" ".join(map(str, c.seeds)), protocol=" ".join(sorted(c.protocols)),
               pairs="; ".join(c.pairs))
  return row


def render(table: Table, seeds: tuple[int, ...], demo: bool = False) -> Rendered:
  """The table in the paper's layout with our rows (Tables 2-3) or columns (ablations)."""
  cells = {(row.label, col.key): cell(row.runs[col.key], col.split)
           for row in table.rows for col in table.columns}
  paper = _paper_values(table)
  csv_rows = []
  if table.name in ("table2", "table3"):
    body = _comparison(table, paper, cells, csv_rows)
  else:
    body = _ablation(table, paper, cells, csv_rows)
  markdown = "\n".join(_header(table, cells, seeds, demo) + body) + "\n"
  return Rendered(markdown, csv_rows, cells)


def _comparison(table, paper, cells, csv_rows) -> list[str]:
  """Every method of the paper in its order, ours right below the row it reproduces."""
  head = "| method | year | " + " | ".join(c.label for c in table.columns) + " |"
  lines = [head, "|" + " --- |" * (2 + len(table.columns))]
  ours = {row.paper_row: row for row in table.rows}
  for prow in table.paper["rows"]:
    values = [paper[prow["row"]].get(c.key) for c in table.columns]
    lines.append(f"| {prow['row']} | {prow.get('year', '')} | "
                 + " | ".join(paper_text(v) for v in values) + " |")
    for col, v in zip(table.columns, values):
      for k, metric in enumerate(METRICS):
        csv_rows.append(_csv_row(table, prow["row"], prow["row"], col, metric,
                                 v[k] if v else None, None))
    row = ours.get(prow["row"])
    if row is None:
      continue
    _our_row(table, row, cells, lines, csv_rows)
  for row in table.rows:
    if row.paper_row is None:  # rows the paper has not (the train-free retriever)
      _our_row(table, row, cells, lines, csv_rows)
  return lines + _trainfree_reference(table)


def _our_row(table, row, cells, lines, csv_rows) -> None:
  """One row of ours in a comparison table, and its CSV lines."""
  # The rows the paper lacks are the train-free retriever's: one deterministic run.
  runs = "seeds" if row.paper_row else "one run"
  lines.append(f"| **{row.label}** | {runs} | "
               + " | ".join(ours_text(cells[(row.label, c.key)]) for c in table.columns) + " |")
  for col in table.columns:
    for k, metric in enumerate(METRICS):
      csv_rows.append(_csv_row(table, row.label, row.paper_row, col, metric, None,
                               cells[(row.label, col.key)]))


def _trainfree_reference(table) -> list[str]:
  """Published train-free results (paper_results.json: trainfree_reference) below a comparison
  table that has our train-free row. They are on another benchmark than the table's columns, so
  they get their own small table rather than a place under the wrong columns."""
  reference = published().get("trainfree_reference")
  if not reference or not any(row.paper_row is None for row in table.rows):
    return []
  lines = ["", f"Published train-free methods, for scale: {reference['note']}", "",
           f"| method | {reference['benchmark']} |", "| --- | --- |"]
  return lines + [f"| {r['row']} | {paper_text(r['values'])} |" for r in reference["rows"]]


def _ablation(table, paper, cells, csv_rows) -> list[str]:
  """One row per setting: the paper's numbers and ours side by side, and the runs' folder."""
  col = table.columns[0]
  lines = ["| setting | paper R1@0.5 / R1@0.7 / mIoU | tea_jax R1@0.5 / R1@0.7 / mIoU | runs |",
           "| --- | --- | --- | --- |"]
  for row in table.rows:
    values = paper.get(row.paper_row, {}).get(col.key) if row.paper_row else None
    c = cells[(row.label, col.key)]
    first = row.runs[col.key][0]
    where = f"{first.benchmark}/{first.name}/seed*"
    lines.append(f"| {row.label} | {paper_text(values)} | {ours_text(c)} | {where} |")
    for k, metric in enumerate(METRICS):
      csv_rows.append(_csv_row(table, row.label, row.paper_row, col, metric,
                               values[k] if values else None, c))
  return lines


def csv_text(rows: list[dict]) -> str:
  """The CSV file: one line per (row, column, metric), paper and ours."""
  out = io.StringIO()
  writer = csv.DictWriter(out, fieldnames=list(rows[0]), lineterminator="\n")
  writer.writeheader()
  writer.writerows(rows)
  return out.getvalue()


def plot(table, rendered: Rendered, path: str) -> None:
  """Fig. 3 (bars per setting) or Fig. 4 (lines over alpha) with the paper's values marked."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=import-outside-toplevel
  col = table.columns[0]
  paper = _paper_values(table)
  fig, ax = plt.subplots(figsize=(7, 4.2))
  colours = {"r1@0.5": "tab:blue", "r1@0.7": "tab:orange", "miou": "tab:green"}
  marked = False
  for k, metric in enumerate(METRICS):
    xs, means, stds, paper_xs, paper_ys = [], [], [], [], []
    for i, row in enumerate(table.rows):
      x = row.alpha if table.name == "fig4" else i + (k - 1) * 0.27
      c = rendered.cells[(row.label, col.key)]
      if c.seeds:
        mean, std = c.mean_std(metric)
        xs.append(x)
        means.append(mean)
        stds.append(std or 0.0)
      values = paper.get(row.paper_row, {}).get(col.key) if row.paper_row else None
      if values:
        paper_xs.append(x)
        paper_ys.append(values[k])
    label = METRIC_LABELS[metric]
    if table.name == "fig4":
      ax.errorbar(xs, means, yerr=stds, marker="o", capsize=3, color=colours[metric],
                  label=f"tea_jax {label}")
    else:
      ax.bar(xs, means, width=0.25, yerr=stds, capsize=3, color=colours[metric],
             label=f"tea_jax {label}")
    if paper_xs:
      ax.scatter(paper_xs, paper_ys, marker="*", s=160, color=colours[metric],
                 edgecolors="black", zorder=5, label=f"paper {label}")
      marked = True
  if table.name == "fig4":
    ax.set_xlabel("alpha")
    ax.set_xticks([row.alpha for row in table.rows],
                  [alpha_text(row.alpha) for row in table.rows])
  else:
    ax.set_xticks(range(len(table.rows)), [row.paper_row or row.label for row in table.rows])
  ax.set_ylabel(f"% on {col.label}")
  protocols = sorted({p for c in rendered.cells.values() for p in c.protocols})
  ax.set_title(f"{table.title}\nprotocol: {', '.join(protocols) or 'none finished'}"
               + ("" if marked else "; no published value"), fontsize=9)
  ax.legend(fontsize=7, ncol=2)
  fig.tight_layout()
  files.atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=120), binary=True)
  plt.close(fig)
