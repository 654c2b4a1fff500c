"""Which runs each table and figure of the TEA paper needs, as tea_jax command lines
(docs/paper.md).

A run is one `python -m tea_jax.main` training: a config file with a variant, `--config.*`
overrides and a workdir `<runs>/<protocol>/<benchmark>/<name>/seed<k>`. Its config is loaded from
exactly the arguments a dry run prints (`RunSpec.config`), so the printed command and the run are
one thing. Runs are keyed by their workdir: a run two tables need (TEA on Charades-CD test-ood is
in Table 2, Fig. 3, Table 4, Table 5 and Fig. 4) is trained once.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import shlex

import ml_collections
from absl import flags
from ml_collections import config_flags

from tea_jax import cli
from tea_jax.errors import ConfigError

TABLES = ("table2", "table3", "fig3", "table4", "table5", "fig4")
ABLATIONS = ("fig3", "table4", "table5", "fig4")
# The paper's ablations are all on Charades-CD test-ood.
ABLATION_COLUMN = "charades_cd/test_ood"
# Our runs of the comparison tables: paper row -> variant (configs/common.py: VARIANTS).
COMPARED = {"EMB\u2020": "emb", "TEA": "tea"}
# Our rows of the comparison tables that the paper has no row for: label -> variant. The
# train-free retriever (issue 24) has no parameters and no randomness: one run (the first seed's
# folder) stands for every seed.
OURS_ONLY = {"Train-free (tea_jax)": "trainfree"}
DETERMINISTIC = ("trainfree",)
# Fig. 3: EMB, +VN, +PQ, VN+PQ.
FIG3 = {"EMB": "emb", "+VN": "vn", "+PQ": "pq", "VN+PQ": "tea"}
# Table 4 compares merges of the video and narrative features. "Video-only" is the EMB baseline:
# the paper's Video-only numbers are its EMB row (no narratives at all); Add, Attention and
# Concat+MLP are the three VN merges, each with the PQ branch as in TEA (the paper's Concat+MLP row
# is its TEA row).
TABLE4 = {"Video-only": "emb", "Add": "vn_add", "Attention": "vn_attention", "Concat+MLP": "tea"}
# Fig. 4's grid: the paper draws the chart only (maximum at 0.5, its choice), so the grid is ours.
DEFAULT_ALPHAS = (0.1, 0.25, 0.5, 0.75, 1.0)
# Narratives of Table 5 when --narratives is not given, relative to the benchmark folder.
DEFAULT_NARRATIVES = {"blip2": "narratives_blip2.jsonl", "llava": None}  # None: the config's own
# Fields the tool sets itself: an override of one of them would make a run other than its name
# says. Field -> how to set it instead.
_ROWS = "each table chooses its rows' variants"
OWN_FIELDS = {"seed": "give --seeds", "protocol": "give --protocol",
              "data.root": "give --data-root", "variant": _ROWS, "model.merge": _ROWS,
              "model.paragraph_branch": _ROWS, "model.alpha": "Fig. 4 takes --alphas",
              "data.narratives": "Table 5 takes --narratives",
              "data.records_dir": "Table 5 takes --narratives"}
RESULTS_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "paper_results.json")


def published() -> dict:
  """The paper's numbers (tea_apps/paper_results.json)."""
  with open(RESULTS_FILE, encoding="utf-8") as f:
    return json.load(f)


def value_text(value) -> str:
  """A config value as `--config.x=` takes it back (config_flags parses by the field's type)."""
  if isinstance(value, float):
    return repr(value)
  return str(value)


@dataclasses.dataclass(frozen=True)
class RunSpec:
  """One training run: the arguments of `python -m tea_jax.main` and where it writes."""

  benchmark: str  # folder name of the benchmark under the runs (charades_cd, ..., demo)
  config_file: str  # the config file (absolute)
  variant: str
  name: str  # the run's folder: the variant, plus what else differs (alpha, narratives)
  seed: int
  overrides: tuple[str, ...]  # "--config.x=y" in the order they are applied
  workdir: str

  def argv(self) -> list[str]:
    """The `--config` arguments of this run."""
    return [f"--config={self.config_file}:{self.variant}", *self.overrides]

  def config(self) -> ml_collections.ConfigDict:
    """The run's config, parsed from argv() as `python -m tea_jax.main` parses it."""
    return load_config(self.argv())

  def train_command(self) -> str:
    """The equivalent `python -m tea_jax.main` command line."""
    return shlex.join(["python", "-m", "tea_jax.main", *shown(self.argv()),
                       f"--workdir={shown_path(self.workdir)}"])


def shown_path(path: str) -> str:
  """A path as commands show it: relative to the current folder when it lies inside it."""
  rel = os.path.relpath(path)
  return path if rel.startswith("..") else rel


def shown(argv: list[str]) -> list[str]:
  """Command arguments with the config file's path shown relative when it can be."""
  head, rest = argv[0].split("=", 1)
  path, variant = rest.rsplit(":", 1)
  return [f"{head}={shown_path(path)}:{variant}", *argv[1:]]


# Overrides that do not change records (left out of the build command).
NOT_FOR_RECORDS = ("--config.seed=", "--config.protocol=")


def build_command(config_argv: list[str]) -> str:
  """The equivalent `python -m data_prep.build_records` command line."""
  argv = [a for a in config_argv if not a.startswith(NOT_FOR_RECORDS)]
  return shlex.join(["python", "-m", "data_prep.build_records", *shown(argv)])


def _flag_error_line(error: Exception, argv: list[str]) -> str:
  """One line for a config that does not load or an override that does not apply."""
  if isinstance(error, (AttributeError, KeyError)):
    while error.args and isinstance(error.args[0], BaseException):
      error = error.args[0]
    field = str(error.args[0] if error.args else error).splitlines()[0].strip("'\"")
    return (f"unknown config field {field!r} in {' '.join(argv[1:]) or 'the overrides'} (configs "
            f"are locked, so that a typo cannot add a field)")
  lines = [line.strip() for line in str(error).splitlines() if line.strip()]
  if len(lines) > 1 and "Error whilst parsing config file" in lines[0]:
    return f"{argv[0]}: {lines[-1].split(': ', 1)[-1]}"
  return lines[0] if lines else type(error).__name__


def load_config(argv: list[str]) -> ml_collections.ConfigDict:
  """A locked config from `--config=FILE:variant --config.x=y ...`, parsed by absl and
  ml_collections exactly as tea_jax.main parses its command line."""
  values = flags.FlagValues()
  command = ["tea-jax-paper", *argv]
  config_flags.DEFINE_config_file("config", None, "experiment config", flag_values=values,
                                  lock_config=True, sys_argv=command)
  try:
    values(command)
  except (flags.Error, AttributeError, KeyError, ValueError, TypeError) as e:
    raise ConfigError(_flag_error_line(e, argv)) from None
  return values["config"].value


@dataclasses.dataclass
class Options:
  """What the command line asked for (tea_apps/paper.py parses it)."""

  tables: tuple[str, ...]
  runs: str
  seeds: tuple[int, ...]
  protocol: str
  data_root: str | None
  config: str | None  # the ablations' config file instead of configs/charades_cd.py
  overrides: tuple[str, ...]  # the user's --config.x=y, applied to every run
  narratives: dict[str, str]  # Table 5: name -> file
  alphas: tuple[float, ...]
  demo: bool


@dataclasses.dataclass
class Column:
  """A column of a table: a split of a benchmark."""

  key: str  # "<benchmark>/<split>" of the data file
  label: str
  split: str


@dataclasses.dataclass
class Row:
  """A row of ours: its label, the paper row it stands beside, and the seeds' runs per column."""

  label: str
  paper_row: str | None
  runs: dict[str, list[RunSpec]]  # column key -> one run per seed
  alpha: float | None = None


@dataclasses.dataclass
class Table:
  """A table or figure of the paper with our rows."""

  name: str
  title: str
  columns: list[Column]
  paper: dict  # the data file's entry
  rows: list[Row]


@dataclasses.dataclass
class Plan:
  """The tables asked for and the runs they need."""

  options: Options
  tables: list[Table]
  runs: list[RunSpec]  # every run once, in the order they are trained
  configs: dict[str, ml_collections.ConfigDict]  # workdir -> the run's config


def check_overrides(overrides: tuple[str, ...]) -> None:
  """Refuses overrides of the fields the tool sets (one line naming the option to use)."""
  for arg in overrides:
    field = arg.removeprefix("--config.").split("=", 1)[0]
    if field in OWN_FIELDS:
      raise ConfigError(f"{arg}: tea-jax-paper sets config.{field} itself ({OWN_FIELDS[field]})")


def normalised(name: str) -> str:
  """'BLIP-2' and 'blip2' alike: lower case, letters and digits only."""
  return re.sub(r"[^a-z0-9]", "", name.lower())


def alpha_text(alpha: float) -> str:
  """0.25 -> '0.25', 1.0 -> '1' (a folder name)."""
  return f"{alpha:g}"


class Planner:
  """Turns the options into tables of rows of runs."""

  def __init__(self, options: Options):
    """Reads the paper's numbers; no run is known yet."""
    self.options = options
    self.paper = published()
    self.runs: dict[str, RunSpec] = {}
    self.bundled = cli.bundled_configs()

  # Where things are.
  def config_file(self, benchmark: str, ablation: bool) -> str:
    """The config of a benchmark: configs/demo.py for the demo, --config for the ablations, else
    the bundled configs/<benchmark>.py."""
    if self.options.demo:
      return os.path.join(self.bundled, "demo.py")
    if ablation and self.options.config:
      return os.path.abspath(self.options.config)
    return os.path.join(self.bundled, f"{benchmark}.py")

  def folder(self, benchmark: str, config_file: str) -> str:
    """The run folder's benchmark part: the benchmark, or a custom config's file name."""
    if self.options.demo:
      return "demo"
    if os.path.dirname(config_file) == self.bundled:
      return benchmark
    return os.path.splitext(os.path.basename(config_file))[0]

  def data_root(self, benchmark: str) -> str | None:
    """DIR/<benchmark> of --data-root (DIR/demo for the demo, whose default DIR is --runs); None
    keeps the config's own data.root."""
    root = self.options.data_root
    if self.options.demo:
      return os.path.abspath(os.path.join(root or self.options.runs, "demo"))
    return os.path.abspath(os.path.join(root, benchmark)) if root else None

  # Runs.
  def run(self, benchmark: str, variant: str, seed: int, ablation: bool = False, name: str = "",
          extra: tuple[str, ...] = ()) -> RunSpec:
    """The run of a variant and seed (one object per workdir)."""
    config_file = self.config_file(benchmark, ablation)
    folder = self.folder(benchmark, config_file)
    overrides = []
    root = self.data_root(benchmark)
    if root:
      overrides.append(f"--config.data.root={root}")
    overrides += [f"--config.seed={seed}", f"--config.protocol={self.options.protocol}", *extra,
                  *self.options.overrides]
    workdir = os.path.abspath(os.path.join(self.options.runs, self.options.protocol, folder,
                                           name or variant, f"seed{seed}"))
    spec = RunSpec(folder, config_file, variant, name or variant, seed, tuple(overrides), workdir)
    known = self.runs.setdefault(workdir, spec)
    if known != spec:
      raise ConfigError(f"two different runs would share the workdir {workdir}")
    return known

  def seeds(self, benchmark, variant, ablation=False, name="", extra=()) -> list[RunSpec]:
    """The run of every seed asked for (of the first only, for a variant without randomness)."""
    seeds = self.options.seeds[:1] if variant in DETERMINISTIC else self.options.seeds
    return [self.run(benchmark, variant, s, ablation, name, extra) for s in seeds]

  def table(self, name: str) -> Table:
    """The rows and runs of one table or figure."""
    paper = self.paper["tables"][name]
    columns = [Column(c["key"], c["label"], c["key"].split("/", 1)[1]) for c in paper["columns"]]
    rows = getattr(self, f"_{name}_rows", None) or self._comparison_rows
    return Table(name, paper["title"], columns, paper, rows(name, columns))

  def _comparison_rows(self, name, columns) -> list[Row]:
    """Tables 2 and 3: EMB and TEA on every column's benchmark, then the train-free retriever."""
    rows = [Row(f"{row} (tea_jax)".replace("\u2020", ""), row,
                {c.key: self.seeds(c.key.split("/")[0], variant) for c in columns})
            for row, variant in COMPARED.items()]
    return rows + [Row(label, None, {c.key: self.seeds(c.key.split("/")[0], variant)
                                     for c in columns})
                   for label, variant in OURS_ONLY.items()]

  def _ablation(self, label: str, paper_row: str | None, variant: str, name: str = "",
                extra: tuple[str, ...] = (), alpha: float | None = None) -> Row:
    """A row of an ablation: one setting on Charades-CD test-ood."""
    benchmark = ABLATION_COLUMN.split("/")[0]
    return Row(label, paper_row,
               {ABLATION_COLUMN: self.seeds(benchmark, variant, True, name, extra)}, alpha)

  def _fig3_rows(self, name, columns) -> list[Row]:
    """EMB, +VN, +PQ, VN+PQ."""
    del name, columns
    return [self._ablation(label, label, variant) for label, variant in FIG3.items()]

  def _table4_rows(self, name, columns) -> list[Row]:
    """Video-only and the three merges (TABLE4)."""
    del name, columns
    return [self._ablation(f"{label} ({variant})", label, variant)
            for label, variant in TABLE4.items()]

  def default_alpha(self) -> float:
    """The TEA config's own alpha (a grid point equal to it is the plain TEA run)."""
    return float(load_config([f"--config={self.config_file('charades_cd', True)}:tea",
                              *self.options.overrides]).model.alpha)

  def _fig4_rows(self, name, columns) -> list[Row]:
    """TEA at each alpha of the grid; the config's own alpha is the plain TEA run."""
    del columns
    paper_rows = {row["alpha"]: row["row"] for row in self.paper["tables"][name]["rows"]}
    own = self.default_alpha()
    rows = []
    for alpha in self.options.alphas:
      if math.isclose(alpha, own):
        row = self._ablation(f"alpha = {alpha_text(alpha)}", None, "tea", alpha=alpha)
      else:
        row = self._ablation(f"alpha = {alpha_text(alpha)}", None, "tea",
                             f"tea_alpha{alpha_text(alpha)}",
                             (f"--config.model.alpha={value_text(float(alpha))}",), alpha)
      row.paper_row = next((r for a, r in paper_rows.items() if math.isclose(a, alpha)), None)
      rows.append(row)
    return rows

  def _table5_rows(self, name, columns) -> list[Row]:
    """TEA on records built from each narratives file; the config's own file is the plain TEA
    run."""
    del columns
    paper_rows = {normalised(row["row"]): row["row"] for row in self.paper["tables"][name]["rows"]}
    config_file = self.config_file("charades_cd", True)
    tea = load_config([f"--config={config_file}:tea", *self.run_overrides("charades_cd")])
    own = os.path.abspath(os.path.join(tea.data.root, tea.data.narratives))
    rows = []
    for label, path in self.narrative_files(tea).items():
      paper_row = paper_rows.get(normalised(label))
      shown_label = f"{paper_row or label} ({shown_path(path)})"
      if os.path.abspath(path) == own:
        rows.append(self._ablation(shown_label, paper_row, "tea"))
        continue
      key = re.sub(r"[^A-Za-z0-9_.-]", "_", label)
      extra = (f"--config.data.narratives={os.path.abspath(path)}",
               f"--config.data.records_dir=records_{tea.data.pooling}_narratives-{key}")
      rows.append(self._ablation(shown_label, paper_row, "tea", f"tea_narratives-{key}", extra))
    order = list(paper_rows.values())
    rows.sort(key=lambda r: order.index(r.paper_row) if r.paper_row in order else len(order))
    return rows

  def run_overrides(self, benchmark: str) -> list[str]:
    """The overrides every run of the benchmark has (data root and the user's)."""
    root = self.data_root(benchmark)
    return ([f"--config.data.root={root}"] if root else []) + list(self.options.overrides)

  def narrative_files(self, tea: ml_collections.ConfigDict) -> dict[str, str]:
    """Table 5's narratives: --narratives NAME=FILE, else blip2 = narratives_blip2.jsonl and
    llava = the config's data.narratives, in the benchmark folder (the demo: a degraded copy of
    the synthetic narratives stands in for BLIP-2's, see tea_apps/paper.py)."""
    if self.options.narratives:
      return {k: os.path.abspath(v) for k, v in self.options.narratives.items()}
    files = {}
    for label, name in DEFAULT_NARRATIVES.items():
      if self.options.demo and label == "blip2":
        name = DEMO_WEAK_NARRATIVES
      files[label] = os.path.abspath(os.path.join(tea.data.root, name or tea.data.narratives))
    return files


# The demo's stand-in for a second narrator (written by tea_apps.paper.prepare_demo).
DEMO_WEAK_NARRATIVES = "narratives_weak.jsonl"


def plan(options: Options) -> Plan:
  """The tables asked for and every run they need, each once."""
  check_overrides(options.overrides)
  if options.config:
    if options.demo:
      raise ConfigError("--demo uses configs/demo.py: give changes as --config.FIELD=VALUE")
    if ":" in os.path.basename(options.config):
      raise ConfigError(f"--config {options.config}: give the file without a :variant (each "
                        f"table chooses the variants of its rows)")
    if not os.path.isfile(options.config):
      raise ConfigError(f"--config {options.config}: no such file")
    if not set(options.tables) & set(ABLATIONS):
      raise ConfigError(f"--config applies to the single-benchmark tables ({', '.join(ABLATIONS)})"
                        f"; {', '.join(options.tables)} use the bundled config of each benchmark "
                        f"(change them with --config.FIELD=VALUE)")
  if not options.seeds:
    raise ConfigError("--seeds: give at least one seed")
  planner = Planner(options)
  tables = [planner.table(name) for name in options.tables]
  configs = {run.workdir: run.config() for run in planner.runs.values()}
  for table in tables:
    for row in table.rows:
      for column in table.columns:
        for run in row.runs[column.key]:
          splits = configs[run.workdir].data.eval_splits
          if column.split not in splits:
            raise ConfigError(f"{table.name} needs split {column.split!r} of {run.config_file}, "
                              f"whose data.eval_splits are {tuple(splits)}")
  return Plan(options, tables, list(planner.runs.values()), configs)
