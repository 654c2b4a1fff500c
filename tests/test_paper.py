"""tea-jax-paper (tea_apps/paper.py) on a tiny synthetic demo: the tables' numbers against the runs'
metrics.json (mean and sample deviation recomputed here), the paper's numbers against the data
file and the data file against PAPER_RESULTS.md, the files written, finished runs skipped, the
printed commands equal to the runs, and bad input in one line."""

import csv
import json
import math
import os
import re
import shlex
import statistics

import pytest
from absl import flags
from conftest import shared_path
from ml_collections import config_flags

from tea_apps import paper, paper_runs, paper_speed
from tea_jax import workdir

# A demo small enough for a test: 60 videos, 1 epoch of a 16-wide model, one reported split.
TINY = ["--config.synthetic_videos=60", "--config.num_epochs=1", "--config.model.hidden=16",
        "--config.model.num_heads=2", "--config.data.eval_splits=('test_ood',)"]
METRICS = ("r1@0.5", "r1@0.7", "miou")
PAPER = paper_runs.published()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  return tmp_path_factory.mktemp("paper_runs")


def tables(*argv) -> str:
  """The printed tables of a command that must succeed."""
  return paper.run(*paper.parse_args([str(a) for a in argv]))


@pytest.fixture(scope="module")
def fig4(runs) -> str:
  """Fig. 4 on the tiny demo: alpha 0.5 (TEA's own) and 1, seeds 0 and 1."""
  return tables("fig4", "--demo", "--runs", runs, "--seeds", "0,1", "--alphas", "0.5,1", *TINY)


@pytest.fixture(scope="module")
def table4(runs, fig4) -> tuple[str, int]:
  """Table 4 on the tiny demo, seed 0, after Fig. 4 (whose TEA seed-0 run it shares), and the
  time TEA's metrics.json was written before it."""
  del fig4
  written = os.stat(runs / "reference" / "demo" / "tea" / "seed0" / "metrics.json").st_mtime_ns
  return tables("table4", "--demo", "--runs", runs, "--seeds", "0", *TINY), written


def call(capsys, *argv) -> tuple[int, str, str]:
  """(exit status, stdout, stderr) of the command."""
  status = paper.main([str(a) for a in argv])
  captured = capsys.readouterr()
  return status, captured.out, captured.err


def paper_values(table: str, row: str) -> list[float] | None:
  """The data file's values of a row on Charades-CD test-ood."""
  rows = {r["row"]: r["values"] for r in PAPER["tables"][table]["rows"]}
  return rows[row]["charades_cd/test_ood"]


def split_metrics(folder) -> dict:
  """test_ood's numbers in a run's metrics.json."""
  return workdir.read_metrics(str(folder))["splits"]["test_ood"]


def csv_rows(path) -> list[dict]:
  with open(path, encoding="utf-8") as f:
    return list(csv.DictReader(f))


def markdown_row(text: str, label: str) -> list[str]:
  """The cells of the Markdown row that starts with `label`."""
  for line in text.splitlines():
    if line.startswith(f"| {label} |"):
      return [cell.strip() for cell in line.strip("|").split("|")]
  raise AssertionError(f"no row {label!r} in:\n{text}")


def test_fig4_demo_prints_the_paper_beside_mean_and_std_over_seeds(runs, fig4):
  out = fig4
  assert "Fig. 4" in out and "Protocol (metrics.json): **reference**" in out
  assert "selects on the test split" in out and "Demo:" in out
  base = runs / "reference" / "fig4"
  assert open(f"{base}.md", encoding="utf-8").read() in out
  with open(f"{base}.png", "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  demo = runs / "reference" / "demo"
  folders = {0.5: demo / "tea", 1.0: demo / "tea_alpha1"}
  for alpha, folder in folders.items():
    configs = [workdir.read_config(str(folder / f"seed{s}")) for s in (0, 1)]
    assert [c.model.alpha for c in configs] == [alpha, alpha]
    assert [c.seed for c in configs] == [0, 1] and configs[0].protocol == "reference"
  rows = csv_rows(f"{base}.csv")
  for alpha, label in ((0.5, "alpha = 0.5"), (1.0, "alpha = 1")):
    measured = [split_metrics(folders[alpha] / f"seed{s}") for s in (0, 1)]
    cells = markdown_row(out, label)
    expected_cells = []
    for k, metric in enumerate(METRICS):
      values = [m[metric] for m in measured]
      mean, std = sum(values) / 2, math.sqrt(sum((v - sum(values) / 2) ** 2 for v in values))
      (row,) = [r for r in rows if r["row"] == label and r["metric"] == metric]
      assert float(row["mean"]) == pytest.approx(mean, abs=1e-4)
      assert float(row["std"]) == pytest.approx(std, abs=1e-4)
      assert row["n"] == "2" and row["seeds"] == "0 1" and row["protocol"] == "reference"
      published = paper_values("fig4", "alpha = 0.5") if alpha == 0.5 else None
      assert row["paper"] == (f"{published[k]:.2f}" if published else "")
      expected_cells.append(f"{mean:.2f} \u00b1 {std:.2f}")
    assert cells[2] == " / ".join(expected_cells)
    assert cells[1] == ("54.28 / 33.04 / 50.28" if alpha == 0.5 else "\u2014")


def test_table4_demo_reuses_finished_runs_and_maps_the_merges(runs, table4):
  out, written = table4
  tea = runs / "reference" / "demo" / "tea" / "seed0" / "metrics.json"
  assert os.stat(tea).st_mtime_ns == written  # Fig. 4's run, not trained again
  assert "Table 4" in out and "Protocol (metrics.json): **reference**" in out
  base = runs / "reference" / "table4"
  assert os.path.isfile(f"{base}.md") and not os.path.exists(f"{base}.png")
  rows = csv_rows(f"{base}.csv")
  for label, variant, merge, branch in (("Video-only", "emb", "none", False),
                                        ("Add", "vn_add", "add", True),
                                        ("Attention", "vn_attention", "attention", True),
                                        ("Concat+MLP", "tea", "concat", True)):
    folder = runs / "reference" / "demo" / variant / "seed0"
    config = workdir.read_config(str(folder))
    assert (config.model.merge, config.model.paragraph_branch) == (merge, branch)
    measured = split_metrics(folder)
    cells = markdown_row(out, f"{label} ({variant})")
    assert cells[2] == " / ".join(f"{measured[m]:.2f}" for m in METRICS)  # one seed: no std
    published = paper_values("table4", label)
    assert cells[1] == (" / ".join(f"{v:.2f}" for v in published) if published else "\u2014")
    for k, metric in enumerate(METRICS):
      (row,) = [r for r in rows if r["paper_row"] == label and r["metric"] == metric]
      assert float(row["mean"]) == pytest.approx(measured[metric], abs=1e-4)
      assert row["std"] == "" and row["n"] == "1"
      assert row["paper"] == (f"{published[k]:.2f}" if published else "")
  assert workdir.read_config(str(runs / "reference" / "demo" / "emb" / "seed0")).data.pooling \
      == "mean"


def parse_like_main(command: str):
  """The config of a printed `python -m tea_jax.main` line, parsed here with absl and
  ml_collections (as tea_jax.main parses its flags), and its --workdir."""
  args = shlex.split(command)[3:]
  workdir_arg = [a for a in args if a.startswith("--workdir=")][0].split("=", 1)[1]
  config_args = [a for a in args if a.startswith("--config")]
  values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "", flag_values=values,
                                  sys_argv=["x", *config_args])
  values(["x", *config_args])
  return values.config, workdir_arg


def test_dry_run_prints_the_runs_commands_and_projects_from_the_step_speed(runs, fig4):
  del fig4
  out = tables("table5", "--demo", "--dry-run", "--runs", runs, "--seeds", "0", "--step-ms",
               "emb=10,tea=20", *TINY)
  lines = [line for line in out.splitlines() if line.startswith("python -m tea_jax.main")]
  assert len(lines) == 2
  finished = [line for line in lines if line.endswith("# finished")]
  new = [line for line in lines if line.endswith("# new")]
  assert len(finished) == 1 and len(new) == 1
  # The printed command of the finished run is the run that was trained.
  config, folder = parse_like_main(finished[0].split("  #")[0])
  saved = workdir.read_config(folder).to_dict()
  printed = json.loads(json.dumps(config.to_dict()))
  del saved["model"]["vocab_size"], printed["model"]["vocab_size"]  # the records' size
  assert printed == saved
  # The second narrator's run reads its own records of the degraded narratives.
  config, folder = parse_like_main(new[0].split("  #")[0])
  weak = os.path.join(config.data.root, paper_runs.DEMO_WEAK_NARRATIVES)
  assert config.data.narratives == weak and os.path.isfile(weak)
  assert config.data.records_dir == "records_max_narratives-blip2"
  builds = [line for line in out.splitlines() if line.startswith("python -m data_prep.build")]
  assert any(f"--config.data.narratives={weak}" in line and line.endswith("# missing")
             for line in builds)
  # 1 epoch of ceil(train pairs / 16) steps at the given 20 ms (the records count the pairs).
  with open(os.path.join(config.data.root, "records_max", "meta.json"), encoding="utf-8") as f:
    steps = math.ceil(json.load(f)["splits"]["train"]["pairs"] / 16)
  row = markdown_row(out, os.path.relpath(folder, runs))
  assert (row[1], row[3], row[4], row[5]) == (str(steps), "20.0", "not counted",
                                              f"{steps * 0.02:.0f} s")
  assert "given by --step-ms" in out


def test_the_step_speed_is_measured_with_the_runs_own_jitted_steps(runs, table4):
  del table4  # trained EMB seed 0: the persistent cache holds its steps
  options, _ = paper.parse_args(["table4", "--demo", "--runs", str(runs), "--seeds", "0", *TINY])
  plan = paper_runs.plan(options)
  (run,) = [r for r in plan.runs if r.variant == "emb"]
  config = plan.configs[run.workdir]
  shapes = paper_speed.shapes(config)
  assert shapes.source == "the records"
  counts, source = paper_speed.pair_counts(run, config)
  assert source == "records"
  total = paper_speed.projection(config, counts, 0)["total_steps"]
  speed = paper_speed.measure(config, shapes, 2, total)
  assert speed["train_ms"] > 0 and speed["eval_ms"] > 0


@pytest.mark.parametrize("argv, message", [
    (["--config.seed=3"], "sets config.seed itself (give --seeds)"),
    (["--config.model.alpha=0.2"], "sets config.model.alpha itself (Fig. 4 takes --alphas)"),
    (["--config.model.hiden=3"], "unknown config field 'hiden'"),
    (["--narratives", "blip2"], "--narratives blip2: expected NAME=FILE"),
    (["--seeds", "0,x"], "--seeds 0,x: expected comma-separated numbers"),
])
def test_bad_input_is_one_line(tmp_path, capsys, argv, message):
  status, out, err = call(capsys, "table4", "--demo", "--dry-run", "--runs", tmp_path, *argv)
  assert status == 2 and out == ""
  assert err.count("\n") == 1 and err.startswith("error: ") and message in err


def test_config_applies_to_the_ablations_only(tmp_path, capsys):
  status, _, err = call(capsys, "table2", "--runs", tmp_path, "--config", __file__)
  assert status == 2 and "--config applies to the single-benchmark tables" in err


def test_a_workdir_of_another_config_is_refused(runs, fig4, capsys):
  del fig4
  other = [a for a in TINY if "num_epochs" not in a] + ["--config.num_epochs=2"]
  status, _, err = call(capsys, "fig4", "--demo", "--runs", runs, "--seeds", "0", "--alphas",
                        "0.5", *other)
  assert status == 2 and "holds a run of another config (num_epochs: 1 there, 2 now)" in err


def test_the_data_file_is_the_transcription_of_paper_results():
  text = shared_path("spec", "PAPER_RESULTS.md").read_text(encoding="utf-8")

  def triple(cell: str):
    return None if cell.strip() == "-" else [float(v) for v in cell.split("/")]

  for table, heading in (("table2", "## Table 2"), ("table3", "## Table 3")):
    section = text.split(heading, 1)[1].split("\n## ", 1)[0]
    found = [[c.strip() for c in line.strip().strip("|").split("|")]
             for line in section.splitlines() if line.startswith("| ") and "---" not in line]
    data = PAPER["tables"][table]
    keys = [c["key"] for c in data["columns"]]
    assert [r[0] for r in found[1:]] == [r["row"] for r in data["rows"]]
    for cells, row in zip(found[1:], data["rows"]):
      assert int(cells[1]) == row["year"]
      assert [triple(c) for c in cells[2:]] == [row["values"][k] for k in keys]
  numbers = r"(\d+\.\d+) / (\d+\.\d+) / (\d+\.\d+)"
  prose = " ".join(text.split())  # the ablations' bullets wrap across lines
  found = {name: [float(v) for v in re.search(pattern + numbers, prose).groups()]
           for name, pattern in (("Video-only", r"Video-only "), ("Concat+MLP", r"Concat\+MLP "),
                                 ("BLIP-2", r"BLIP-2 \([^)]*\) "), ("LLaVA", r"LLaVA \([^)]*\) "))}
  assert paper_values("table4", "Video-only") == found["Video-only"]
  assert paper_values("table4", "Concat+MLP") == found["Concat+MLP"]
  assert paper_values("table5", "BLIP-2") == found["BLIP-2"]
  assert paper_values("table5", "LLaVA") == found["LLaVA"]
  # Fig. 3's end points and Fig. 4's alpha = 0.5 are Table 2's EMB and TEA rows.
  table2 = {r["row"]: r["values"]["charades_cd/test_ood"]
            for r in PAPER["tables"]["table2"]["rows"]}
  assert paper_values("fig3", "EMB") == table2["EMB\u2020"]
  assert paper_values("fig3", "VN+PQ") == table2["TEA"] == paper_values("fig4", "alpha = 0.5")
  assert paper_values("fig3", "+VN") is None and paper_values("table4", "Add") is None


def write_metrics(folder, protocol: str, splits: dict) -> None:
  """A finished run's metrics.json as tea_jax.evaluate.report writes it."""
  os.makedirs(folder, exist_ok=True)
  workdir.write_metrics(str(folder), {"protocol": protocol, "selection": f"{protocol} selection",
                                      "splits": splits})


def summary(values, evaluated=100, annotated=100) -> dict:
  """One split's metrics: R1@0.5, R1@0.7, mIoU and the pairs."""
  out = dict(zip(METRICS, values), count=evaluated,
             queries={"evaluated": evaluated, "annotated": annotated})
  if evaluated < annotated:
    out["note"] = f"{evaluated} of {annotated} queries evaluated"
  return out


def test_table2_layout_from_metrics_files(tmp_path):
  # No training: metrics.json files written here, for seeds 0 and 1 of EMB and TEA on both
  # Charades benchmarks; seed 1 of TEA on Charades-CG has not finished.
  options, _ = paper.parse_args(["table2", "--runs", str(tmp_path), "--data-root",
                                 str(tmp_path / "data"), "--seeds", "0,1", "--protocol", "val"])
  plan = paper_runs.plan(options)
  assert sorted(os.path.relpath(r.workdir, tmp_path) for r in plan.runs) == sorted(
      [f"val/{b}/{v}/seed{s}" for b in ("charades_cd", "charades_cg") for v in ("emb", "tea")
       for s in (0, 1)]
      # The train-free retriever is deterministic: one run per benchmark, whatever the seeds.
      + [f"val/{b}/trainfree/seed0" for b in ("charades_cd", "charades_cg")])
  numbers = {}
  for run in plan.runs:
    if run.benchmark == "charades_cg" and run.variant == "tea" and run.seed == 1:
      continue
    base = 10.0 * (run.variant == "tea") + run.seed
    numbers[(run.benchmark, run.variant, run.seed)] = base
    if run.benchmark == "charades_cd":
      splits = {"test_ood": summary([base, base + 1, base + 2], 3300, 3375)}
    else:
      splits = {"novel_word": summary([base + 3, base + 4, base + 5]),
                "novel_composition": summary([base + 6, base + 7, base + 8])}
    write_metrics(run.workdir, "val", splits)
  (text,) = paper.write_tables(plan)
  lines = text.splitlines()
  emb_paper = [k for k, line in enumerate(lines) if line.startswith("| EMB\u2020 | 2022 |")][0]
  ours = markdown_row(text, "**EMB (tea_jax)**")
  assert lines[emb_paper + 1].startswith("| **EMB (tea_jax)** |")  # right below the paper's row
  sd = statistics.stdev([0.0, 1.0])
  assert ours[2] == (f"0.50 \u00b1 {sd:.2f} / 1.50 \u00b1 {sd:.2f} / 2.50 \u00b1 {sd:.2f} "
                     f"[3300 of 3375 queries evaluated]")
  tea = markdown_row(text, "**TEA (tea_jax)**")
  assert tea[3] == "13.00 / 14.00 / 15.00 (1 of 2 seeds)"
  assert markdown_row(text, "DRN")[2:] == ["31.11 / 15.17 / 23.05", "\u2014", "\u2014"]
  assert "Protocol (metrics.json): **val**: val selection." in text
  assert "expected to be lower" in text
  # Our train-free row after the paper's rows, then the published train-free numbers in a table
  # of their own, named as Charades-STA's (not under the Charades-CD / -CG columns).
  trainfree = markdown_row(text, "**Train-free (tea_jax)**")
  assert trainfree[2] == "0.00 / 1.00 / 2.00 [3300 of 3375 queries evaluated]"
  ours_at = [k for k, line in enumerate(lines) if line.startswith("| **Train-free (tea_jax)** |")]
  assert lines.index("| TFVTG | 49.97 / 24.32 / 44.51 |") > ours_at[0] > emb_paper
  assert "| method | Charades-STA (test) |" in lines and "| TAG | 48.58 / 26.67 / 45.69 |" in lines
  rows = csv_rows(tmp_path / "val" / "table2.csv")
  (row,) = [r for r in rows if r["row"] == "TEA (tea_jax)" and r["column"] ==
            "charades_cg/novel_composition" and r["metric"] == "miou"]
  assert (row["mean"], row["std"], row["n"], row["seeds"]) == ("18.0000", "", "1", "0")
  (row,) = [r for r in rows if r["row"] == "EMB\u2020" and r["column"] == "charades_cd/test_ood"
            and r["metric"] == "r1@0.5"]
  assert row["paper"] == "51.97" and row["mean"] == ""


def test_table4_numbers_recomputed_from_the_predictions_files(runs, table4):
  # Each cell of Table 4, recomputed here in plain Python (float64) from the run's predictions
  # file: every line's IoU from its predicted seconds and the annotation file's true seconds
  # (clipped to the video), then R1@0.5, R1@0.7 and mIoU over the split's pairs.
  out, _ = table4
  rows = csv_rows(runs / "reference" / "table4.csv")
  for label, variant in (("Video-only", "emb"), ("Add", "vn_add"), ("Attention", "vn_attention"),
                         ("Concat+MLP", "tea")):
    folder = runs / "reference" / "demo" / variant / "seed0"
    config = workdir.read_config(str(folder))
    with open(os.path.join(config.data.root, config.data.splits["test_ood"]),
              encoding="utf-8") as f:
      truths = [line.split("##", 1)[0].split() for line in f if line.strip()]
    with open(os.path.join(config.data.root, config.data.durations), encoding="utf-8") as f:
      durations = {vid: float(entry["duration"]) for vid, entry in json.load(f).items()}
    lines = workdir.read_predictions(str(folder), "test_ood")
    assert sorted(p["pair_index"] for p in lines) == list(range(len(truths)))  # every pair once
    ious = []
    for p in lines:
      vid, start, end = truths[p["pair_index"]]
      assert p["video_id"] == vid
      true_start, true_end = max(0.0, float(start)), min(float(end), durations[vid])
      inter = min(p["pred_end"], true_end) - max(p["pred_start"], true_start)
      union = max(p["pred_end"], true_end) - min(p["pred_start"], true_start)
      ious.append(max(inter, 0.0) / union)
    n = len(ious)
    want = {"r1@0.5": 100.0 * sum(x >= 0.5 for x in ious) / n,
            "r1@0.7": 100.0 * sum(x >= 0.7 for x in ious) / n, "miou": 100.0 * sum(ious) / n}
    cells = markdown_row(out, f"{label} ({variant})")
    assert cells[2] == " / ".join(f"{want[m]:.2f}" for m in METRICS)
    for metric in METRICS:
      (row,) = [r for r in rows if r["paper_row"] == label and r["metric"] == metric]
      assert float(row["mean"]) == pytest.approx(want[metric], abs=1e-4)
