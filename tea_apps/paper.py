"""`tea-jax-paper`: the TEA paper's Tables 2-5 and Figs. 3-4 reproduced with tea_jax, each printed
in the paper's layout with the paper's numbers beside ours (docs/paper.md).

    tea-jax-paper {table2,table3,table4,table5,fig3,fig4,all} --runs DIR [--data-root DIR]
        [--config FILE] [--seeds 0,1,2] [--protocol reference|val] [--narratives NAME=FILE ...]
        [--alphas 0.1,0.25,0.5,0.75,1] [--dry-run [--step-ms MS]] [--demo]
        [--config.FIELD=VALUE ...]

Every run is a tea_jax workdir `<runs>/<protocol>/<benchmark>/<run>/seed<k>`, trained as
`python -m tea_jax.main` would train it (a dry run prints those commands), resumed when it was
stopped and skipped when it has finished; record sets are built when missing. The tables go to
stdout and to `<runs>/<protocol>/<table>.md` and `.csv` (Figs. 3 and 4 also `.png`).
`--demo` runs the same on the bundled synthetic benchmark (configs/demo.py), in minutes on a CPU.
"""

import argparse
import json
import logging
import os
import shlex
import sys

import jax

from data_prep import build_records, synthetic
from tea_apps import paper_runs, paper_tables
from tea_apps.paper_runs import Options, Plan, RunSpec, TABLES
from tea_jax import cli, compilation_cache, files, train, trainfree
from tea_jax import workdir as workdir_files
from tea_jax.config_checks import uses_narrative
from tea_jax.data.input_pipeline import load_meta
from tea_jax.data.schema import data_path, records_dir
from tea_jax.errors import ConfigError, InputError

log = logging.getLogger("tea_apps.paper")  # also when run as __main__
# The demo: fewer epochs than configs/demo.py's 20, only the splits that stand in for the paper's
# (configs/demo.py also reports `test`), two seeds; the same fields given on the command line win.
DEMO_OVERRIDES = ("--config.num_epochs=10",
                  "--config.data.eval_splits=('test_ood', 'novel_word', 'novel_composition')")
DEMO_SEEDS = "0,1"
DEMO_RUNS = os.path.join("runs", "paper_demo")
# The demo's synthetic benchmark is always drawn with this generator seed (the runs' seeds vary).
DEMO_DATA_SEED = 0
# Fields of a workdir's config.json that do not make it another run: the vocabulary size is
# filled in from the records, the compilation cache is where compiled programs are kept.
IGNORED_FIELDS = ("model.vocab_size", "compilation_cache")


def split_overrides(argv: list[str]) -> tuple[list[str], list[str]]:
  """(the command's own arguments, the --config.FIELD=VALUE overrides for every run)."""
  own, overrides = [], []
  k = 0
  while k < len(argv):
    arg = argv[k]
    if arg.startswith("--config."):
      if "=" not in arg:
        if k + 1 >= len(argv):
          raise ConfigError(f"{arg}: give a value (--config.FIELD=VALUE)")
        arg, k = f"{arg}={argv[k + 1]}", k + 1
      overrides.append(arg)
    else:
      own.append(arg)
    k += 1
  return own, overrides


def parse_args(argv: list[str]) -> tuple[Options, argparse.Namespace]:
  """The command's options (and the dry run's)."""
  own, overrides = split_overrides(argv)
  parser = argparse.ArgumentParser(prog="tea-jax-paper", description=__doc__.split("\n\n")[0],
                                   epilog="--config.FIELD=VALUE overrides go to every run.")
  parser.add_argument("what", choices=TABLES + ("all",), help="the table or figure to reproduce")
  parser.add_argument("--runs", help="where the runs and tables go (default with --demo: "
                                     f"{DEMO_RUNS})")
  parser.add_argument("--data-root", help="folder with one folder per benchmark (charades_cd, "
                                          "charades_cg, activitynet_cd, activitynet_cg); default: "
                                          "each config's data.root (with --demo: <runs>)")
  parser.add_argument("--config", help="config file of the single-benchmark tables (fig3, table4, "
                                       "table5, fig4) instead of configs/charades_cd.py")
  parser.add_argument("--seeds", help=f"comma-separated seeds (default 0,1,2; --demo {DEMO_SEEDS})")
  parser.add_argument("--protocol", choices=("reference", "val"), default="reference",
                      help="reference: EMB's loop, where the paper's numbers come from (selects on "
                           "the test split); val: the checkpoint chosen on the validation split")
  parser.add_argument("--narratives", nargs="+", action="extend", metavar="NAME=FILE",
                      help="Table 5's narratives files (default: blip2=narratives_blip2.jsonl and "
                           "llava=the config's data.narratives, in the benchmark folder)")
  parser.add_argument("--alphas", default=",".join(map(paper_runs.alpha_text,
                                                        paper_runs.DEFAULT_ALPHAS)),
                      help="Fig. 4's grid of alpha")
  parser.add_argument("--dry-run", action="store_true",
                      help="print the commands and the projected time, run nothing")
  parser.add_argument("--step-ms", type=_step_ms,
                      help="with --dry-run: ms per training step to project with, instead of "
                           "measuring the runs' steps on this machine: MS for every model, or "
                           "emb=MS,tea=MS (models without / with narratives); evaluations are then "
                           "not counted")
  parser.add_argument("--speed-steps", type=int, default=5,
                      help="with --dry-run: steps timed per model after compiling")
  parser.add_argument("--demo", action="store_true",
                      help="the bundled synthetic benchmark (configs/demo.py), few epochs")
  args = parser.parse_args(own)
  if not args.runs:
    if not args.demo:
      parser.error("--runs is required (where the runs and tables go)")
    args.runs = DEMO_RUNS
  if args.demo:
    given = {o.split("=", 1)[0] for o in overrides}
    overrides[:0] = [o for o in DEMO_OVERRIDES if o.split("=", 1)[0] not in given]
  options = Options(
      tables=TABLES if args.what == "all" else (args.what,), runs=os.path.abspath(args.runs),
      seeds=_numbers(args.seeds or (DEMO_SEEDS if args.demo else "0,1,2"), int, "--seeds"),
      protocol=args.protocol, data_root=args.data_root, config=args.config,
      overrides=tuple(overrides), narratives=_named_files(args.narratives or []),
      alphas=_numbers(args.alphas, float, "--alphas"), demo=args.demo)
  return options, args


def _numbers(text: str, kind, flag: str) -> tuple:
  """'0,1,2' -> (0, 1, 2), distinct, in the given order."""
  try:
    values = tuple(kind(part) for part in text.split(",") if part.strip())
  except ValueError:
    raise ConfigError(f"{flag} {text}: expected comma-separated numbers") from None
  if not values or len(set(values)) != len(values):
    raise ConfigError(f"{flag} {text}: expected distinct comma-separated numbers")
  return values


def _step_ms(text: str) -> dict[str, float]:
  """'37' -> {emb: 37, tea: 37}; 'emb=18,tea=37' -> {emb: 18, tea: 37}."""
  try:
    if "=" not in text:
      return {"emb": float(text), "tea": float(text)}
    given = {k.strip(): float(v) for k, v in (part.split("=", 1) for part in text.split(","))}
  except ValueError:
    raise argparse.ArgumentTypeError(f"{text!r}: expected MS or emb=MS,tea=MS") from None
  if set(given) != {"emb", "tea"}:
    raise argparse.ArgumentTypeError(f"{text!r}: expected both emb=MS and tea=MS")
  return given


def _named_files(items: list[str]) -> dict[str, str]:
  """NAME=FILE arguments -> {NAME: FILE}."""
  out = {}
  for item in items:
    name, sep, path = item.partition("=")
    if not sep or not name or not path:
      raise ConfigError(f"--narratives {item}: expected NAME=FILE")
    if name in out:
      raise ConfigError(f"--narratives: {name} given twice")
    out[name] = path
  return out


# Phases of a real run.
def prepare_demo(plan: Plan) -> None:
  """Writes the synthetic benchmark when missing, and its weaker narrator's copy (Table 5)."""
  config = next(iter(plan.configs.values()))
  root = config.data.root
  durations = data_path(config.data, "durations")
  videos = config.synthetic_videos
  if os.path.isfile(durations):
    with open(durations, encoding="utf-8") as f:
      found = len(json.load(f))
    if found != videos:
      raise ConfigError(f"the synthetic benchmark in {root} has {found} videos but "
                        f"config.synthetic_videos is {videos}: remove the folder or choose another "
                        f"--data-root")
  else:
    log.info("writing the synthetic benchmark (%d videos) to %s", videos, root)
    synthetic.generate(root, videos=videos, seed=DEMO_DATA_SEED,
                       video_dim=config.model.video_dim, word_dim=config.model.word_dim)
  weak = os.path.join(root, paper_runs.DEMO_WEAK_NARRATIVES)
  if not os.path.isfile(weak):
    moved = synthetic.degrade_narratives(data_path(config.data, "narratives"), weak)
    log.info("wrote %s (%d captions moved): the demo's second narrator for Table 5", weak, moved)


def record_sets(plan: Plan) -> dict[str, tuple[RunSpec, object]]:
  """{records folder: (the first run that reads it, its config)}."""
  out = {}
  for run in plan.runs:
    config = plan.configs[run.workdir]
    out.setdefault(os.path.abspath(records_dir(config.data)), (run, config))
  return out


def _absolute(path: str | None) -> str | None:
  """The absolute path, or None for no file."""
  return os.path.abspath(path) if path else None


def records_state(config) -> str:
  """'present' or 'missing'; records built from other narratives than the config's are refused."""
  folder = records_dir(config.data)
  try:
    meta = load_meta(folder)
  except FileNotFoundError:
    return "missing"
  except InputError:  # an older record format: built again
    return "missing (older format)"
  wanted = build_records.narratives_file(config) or None
  built = (meta.get("narratives") or {}).get("file")
  if "narratives" in meta and _absolute(built) != _absolute(wanted):
    raise InputError(f"the records in {folder} were built from narratives "
                     f"{built or '(none)'} but this run reads {wanted or '(none)'}: remove them "
                     f"or choose another --data-root")
  return "present"


def missing_inputs(config) -> list[str]:
  """The input files of a record set that do not exist."""
  data = config.data
  paths = [n if os.path.isabs(n) else os.path.join(data.root, n) for n in data.splits.values()]
  paths += [data_path(data, "features"), data_path(data, "word_vectors")]
  if data.durations:
    paths.append(data_path(data, "durations"))
  if build_records.narratives_file(config):
    paths.append(build_records.narratives_file(config))
  return [p for p in paths if not os.path.exists(p)]


def _flat(d: dict, prefix: str = "") -> dict:
  """A nested dict as {"a.b": value}."""
  out = {}
  for key, value in d.items():
    if isinstance(value, dict):
      out.update(_flat(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = value
  return out


def run_state(run: RunSpec, config) -> str:
  """'new', 'resumes' or 'finished'; a workdir holding a run of another config is refused."""
  if not os.path.isfile(os.path.join(run.workdir, workdir_files.CONFIG_FILE)):
    return "new"
  saved = _flat(json.loads(json.dumps(workdir_files.read_config(run.workdir).to_dict())))
  wanted = _flat(json.loads(json.dumps(config.to_dict())))
  differ = sorted(k for k in set(saved) | set(wanted)
                  if k not in IGNORED_FIELDS and saved.get(k) != wanted.get(k))
  if differ:
    shown = ", ".join(f"{k}: {saved.get(k)!r} there, {wanted.get(k)!r} now" for k in differ[:3])
    raise ConfigError(f"{run.workdir} holds a run of another config ({shown}"
                      f"{', ...' if len(differ) > 3 else ''}): choose another --runs or remove it")
  if os.path.isfile(os.path.join(run.workdir, workdir_files.METRICS_FILE)):
    return "finished"
  return "resumes"


def enable_cache(runs: str) -> None:
  """One persistent compilation cache for all runs (unless JAX already has one): the runs of a
  table share their few programs."""
  if not jax.config.jax_compilation_cache_dir:
    compilation_cache.enable(os.path.join(runs, ".jax_cache"))


def build_missing_records(plan: Plan) -> None:
  """Builds each record set the runs need that is not there."""
  for folder, (run, config) in record_sets(plan).items():
    state = records_state(config)
    if state != "present":
      log.info("records %s: %s, building them (%s)", folder, state,
               paper_runs.build_command(run.argv()))
      build_records.build_records(config, progress=sys.stderr.isatty())


def train_runs(plan: Plan) -> None:
  """Trains every run that has not finished (resuming those that were stopped)."""
  for k, run in enumerate(plan.runs, start=1):
    config = plan.configs[run.workdir]
    state = run_state(run, config)
    where = os.path.relpath(run.workdir, plan.options.runs)
    if state == "finished":
      log.info("[%d/%d] %s: finished, skipped", k, len(plan.runs), where)
      continue
    log.info("[%d/%d] %s: %s", k, len(plan.runs), where,
             "resuming" if state == "resumes" else "training")
    out = train.train_and_evaluate(config, run.workdir, progress=sys.stderr.isatty())
    if "metrics" not in out:
      log.warning("%s stopped at step %d before the end of its training: its numbers are left out "
                  "until a later call finishes it", where, out["step"])


def write_tables(plan: Plan) -> list[str]:
  """Each table as Markdown (returned, and written with its CSV and, for figures, PNG)."""
  out_dir = os.path.join(plan.options.runs, plan.options.protocol)
  texts = []
  for table in plan.tables:
    rendered = paper_tables.render(table, plan.options.seeds, plan.options.demo)
    base = os.path.join(out_dir, table.name)
    written = [base + ".md", base + ".csv"]
    files.atomic_write(base + ".md", lambda f, text=rendered.markdown: f.write(text))
    files.atomic_write(base + ".csv",
                       lambda f, rows=rendered.rows: f.write(paper_tables.csv_text(rows)))
    if table.name in ("fig3", "fig4"):
      paper_tables.plot(table, rendered, base + ".png")
      written.append(base + ".png")
    texts.append(rendered.markdown + "\nwritten: " + ", ".join(written) + "\n")
  return texts


# The dry run.
def dry_run(plan: Plan, args: argparse.Namespace) -> str:
  """The commands the tables need, in order, and their projected time."""
  from tea_apps import paper_speed  # pylint: disable=import-outside-toplevel
  o = plan.options
  lines = [f"# tea-jax-paper {' '.join(o.tables)}: protocol {o.protocol}, seeds "
           f"{','.join(map(str, o.seeds))}: {len(plan.runs)} runs", ""]
  if o.demo:
    config = next(iter(plan.configs.values()))
    state = "present" if os.path.isfile(data_path(config.data, "durations")) else "missing"
    lines += ["## synthetic benchmark (written when missing)", shlex.join([
        "python", "-m", "data_prep.synthetic", "--out", config.data.root, "--videos",
        str(config.synthetic_videos), "--seed", str(DEMO_DATA_SEED), "--video-dim",
        str(config.model.video_dim), "--word-dim", str(config.model.word_dim)]) + f"  # {state}",
              f"(and {paper_runs.DEMO_WEAK_NARRATIVES} beside it: a degraded copy of "
              f"narratives.jsonl, data_prep.synthetic.degrade_narratives)", ""]
  lines.append("## records (built when missing)")
  for folder, (run, config) in record_sets(plan).items():
    lines.append(f"{paper_runs.build_command(run.argv())}  # {records_state(config)}")
    if not o.demo and not os.path.isdir(config.data.root):
      lines.append(f"#   benchmark folder not found: {config.data.root}")
    elif not o.demo and missing_inputs(config):
      lines.append(f"#   inputs not found: {', '.join(missing_inputs(config))}")
  lines += ["", "## runs (resumed when stopped, skipped when finished)"]
  states = {}
  for run in plan.runs:
    states[run.workdir] = run_state(run, plan.configs[run.workdir])
    lines.append(f"{run.train_command()}  # {states[run.workdir]}")
  lines += ["", "## projected time"] + _projection_lines(plan, args, states, paper_speed)
  return "\n".join(lines) + "\n"


def _projection_lines(plan: Plan, args, states: dict, paper_speed) -> list[str]:
  """A table of steps and time per run, the total, and where the numbers come from."""
  speeds, sources, rows, total, unknown = {}, set(), [], 0.0, 0
  for run in plan.runs:
    config = plan.configs[run.workdir]
    name = os.path.relpath(run.workdir, plan.options.runs)
    if states[run.workdir] == "finished":
      rows.append(f"| {name} | 0 | 0 | | | finished |")
      continue
    if trainfree.is_trainfree(config):  # no step to time: a numpy search per pair
      rows.append(f"| {name} | 0 | 0 | | | seconds (no training) |")
      continue
    counts, source = paper_speed.pair_counts(run, config)
    sources.add(source)
    if counts is None:
      unknown += 1
      rows.append(f"| {name} | ? | ? | | | unknown |")
      continue
    done = paper_speed.steps_done(run.workdir) if states[run.workdir] == "resumes" else 0
    work = paper_speed.projection(config, counts, done)
    if args.step_ms:
      train_ms = args.step_ms["tea" if uses_narrative(config.model) else "emb"]
      eval_ms = 0.0
    else:
      shapes = paper_speed.shapes(config)
      key = paper_speed.speed_key(config, shapes)
      if key not in speeds:
        log.info("timing the jitted steps of %s (%s)", name, shapes.source)
        speeds[key] = dict(paper_speed.measure(config, shapes, args.speed_steps,
                                               work["total_steps"]),
                           shapes=f"{run.name} and alike: B={config.batch_size} "
                                  f"L={shapes.length} W={shapes.words} ({shapes.source})")
      train_ms, eval_ms = speeds[key]["train_ms"], speeds[key]["eval_ms"]
    seconds = (work["train_steps"] * train_ms + work["eval_steps"] * eval_ms) / 1e3
    total += seconds
    eval_text = "not counted" if args.step_ms else f"{eval_ms:.1f}"
    rows.append(f"| {name} | {work['train_steps']} | {work['eval_steps']} | {train_ms:.1f} | "
                f"{eval_text} | {paper_speed.duration_text(seconds)} |")
  lines = ["| run | train steps | eval steps | ms/train step | ms/eval step | time |",
           "| --- | --- | --- | --- | --- | --- |"] + rows
  lines.append(f"\ntotal: {paper_speed.duration_text(total)}"
               + (f" ({unknown} runs of unknown size left out)" if unknown else ""))
  if args.step_ms:
    lines.append(f"speed: given by --step-ms (ms per training step: EMB {args.step_ms['emb']:g}, "
                 f"models that read narratives {args.step_ms['tea']:g}); evaluations not counted")
  else:
    lines.append(f"speed: measured on this machine ({paper_speed.device_text()}): "
                 f"{args.speed_steps} calls of each model's jitted train step and eval step "
                 f"(tea_jax.train / tea_jax.evaluate), queued back to back after compiling, on "
                 f"batches of the runs' padded shapes; another machine (a GPU) runs at its own "
                 f"speed: project for it with --step-ms")
    for value in speeds.values():
      lines.append(f"  {value['shapes']}: train {value['train_ms']:.1f} ms, eval "
                   f"{value['eval_ms']:.1f} ms (compiling took {value['compile_s']:.0f} s)")
  lines.append(f"pairs per split from: {'; '.join(sorted(sources)) or 'nothing to run'}")
  lines.append("not counted: compiling, checkpoint writes, the input pipeline's setup at each "
               "evaluation, data preparation (features, narration, records)")
  return lines


def run(options: Options, args: argparse.Namespace) -> str:
  """The dry run's text, or the tables' after training what they need."""
  plan = paper_runs.plan(options)
  if args.dry_run:
    return dry_run(plan, args)
  if options.demo:
    prepare_demo(plan)
  enable_cache(options.runs)
  build_missing_records(plan)
  train_runs(plan)
  return "\n".join(write_tables(plan))


def main(argv=None) -> int:
  """The command; from the command line (argv None) the phases log their progress to stderr."""
  if argv is None:
    cli.setup_logging()
    argv = sys.argv[1:]
  status, result = cli.call_reporting(lambda: run(*parse_args(argv)))
  if status:
    return status
  print(result, end="")
  return 0


if __name__ == "__main__":
  sys.exit(main())
