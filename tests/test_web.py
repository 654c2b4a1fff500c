"""tea-jax-web (tea_apps/web.py) on a small demo: a synthetic benchmark with its videos, a TEA
model and an EMB model trained for two epochs and evaluated.

The handlers are called as plain functions and held against independent computations: the Ask
table against tea_apps.api.Predictor's moments for the same video and queries, the Browse summary
against metrics.json, the histogram against numpy's over IoUs recomputed from the predicted seconds
and the annotation file, the filters against the pairs picked by hand. Then a real browser
(headless Chromium through Selenium) asks a question and opens Browse on the running server,
saving screenshots of both tabs (into $TEA_WEB_SCREENSHOTS when set: `TEA_WEB_SCREENSHOTS=docs/images`
refreshes the README's; a temporary folder otherwise, so that a test run leaves the checkout as it
was); without a browser that test skips, saying why.
"""

import json
import logging
import os
import pathlib
import shutil
import socket

import av
import numpy as np
import pytest
from conftest import tiny_train_config

from data_prep import synthetic
from data_prep.annotations import read_annotations, read_durations
from data_prep.build_records import build_records
from data_prep.narratives import read_narratives
from tea_apps import web
from tea_apps.api import Predictor
from tea_jax import checkpointing, train
from tea_jax.errors import InputError

QUERIES = ["person opens the door.", "person holds the cup."]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
  """demo_data/ (24 synthetic videos, with their mp4 files) and runs/tea, runs/emb evaluated on
  test and test_ood."""
  root = tmp_path_factory.mktemp("web")
  data = root / "demo_data"
  synthetic.generate(str(data), videos=24, seed=1, video_dim=256, word_dim=50, write_videos=True)
  configs = {}
  for name, merge, seed in (("tea", "concat", 3), ("emb", "none", 0)):
    config = tiny_train_config(data, seed=seed)
    config.data.eval_splits = ("test", "test_ood")
    config.model.merge = merge
    configs[name] = config
  build_records(configs["tea"], progress=False)  # with narratives: both models read them
  for name, config in configs.items():
    train.train_and_evaluate(config, str(root / "runs" / name), progress=False)
  return {"root": root, "data": data, "tea": str(root / "runs" / "tea"),
          "emb": str(root / "runs" / "emb"), "videos": str(data / "videos")}


def make_app(world, tmp_path, *extra):
  args = web.parse_args(["--workdir", world["tea"], "--compare-workdir", world["emb"],
                         "--videos", world["videos"], *extra])
  return web.make_app(args, str(tmp_path))


@pytest.fixture(scope="module")
def app(world, tmp_path_factory):
  return make_app(world, tmp_path_factory.mktemp("web_out"))


def api_rows(world, video_id: str, queries: list[str], top_k: int) -> list[list]:
  """The Ask table as the Python API answers: the data video's features, annotated duration and
  narratives through Predictor.predict_features."""
  data = world["data"]
  predictor = Predictor.from_workdir(world["tea"], word_vectors=str(data / "glove.txt"))
  features = np.load(data / "features" / f"{video_id}.npy")
  duration = read_durations(str(data / "charades.json"))[video_id]
  narratives = read_narratives(str(data / "narratives.jsonl"))[0][video_id]
  results = predictor.predict_features(features, duration, queries, narratives, top_k)
  return [[r.query, rank + 1, m.to_dict()["start"], m.to_dict()["end"], round(m.probability, 4)]
          for r in results for rank, m in enumerate(r.moments)]


def test_ask_gives_the_apis_moments_a_timeline_and_a_playable_video(world, app):
  answer = web.ask(app, app.videos["S0013"], "\n".join(QUERIES) + "\n\n", top_k=2)
  assert answer.rows == api_rows(world, "S0013", QUERIES, 2)
  with open(answer.timeline, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  # The synthetic mp4 is MPEG-4 part 2, which browsers do not play: the player gets an H.264 copy
  # with every frame.
  with av.open(answer.video) as copy, av.open(app.videos["S0013"]) as original:
    assert copy.streams.video[0].codec_context.name == "h264"
    assert (sum(1 for _ in copy.decode(video=0))
            == sum(1 for _ in original.decode(video=0)))
  assert web.seek_start(answer.rows[1]) == answer.rows[1][2]


def test_a_second_question_restores_nothing_again(world, tmp_path, monkeypatch):
  calls = []
  restore = checkpointing.restore_variables
  monkeypatch.setattr(checkpointing, "restore_variables",
                      lambda *args: calls.append(args) or restore(*args))
  app = make_app(world, tmp_path)
  web.ask(app, app.videos["S0014"], QUERIES[0], top_k=1)
  web.ask(app, app.videos["S0014"], QUERIES[1], top_k=1)
  assert len(calls) == 2  # once per model, at the first question


def test_bad_input_is_one_line(world, app, tmp_path):
  bad = tmp_path / "clip.mp4"
  bad.write_bytes(b"not a video at all")
  cases = [
      (lambda: web.split_queries(" \n  "), "type a query (one per line)"),
      (lambda: web.ask(app, str(bad), QUERIES[0]), "cannot decode clip.mp4 as a video"),
      (lambda: web.ask(app, app.videos["S0013"], "zyx qwv"), "no word of the query 'zyx qwv'"),
      (lambda: web.pick_video(app, None, None), "pick one of --videos"),
      (lambda: web.pick_video(app, "S9999", None), "no video 'S9999' under --videos"),
      (lambda: web.filter_pairs([], 0.8, 0.2), "the IoU range is empty"),
  ]
  for call, message in cases:
    with pytest.raises(InputError) as error:
      call()
    assert message in str(error.value) and "\n" not in str(error.value), str(error.value)
  # A workdir that has not been evaluated: its Browse tab says so.
  bare = tmp_path / "bare"
  shutil.copytree(world["tea"], bare, ignore=shutil.ignore_patterns("predictions_*",
                                                                   "metrics.json"))
  bare_app = web.make_app(web.parse_args(["--workdir", str(bare)]), str(tmp_path))
  with pytest.raises(InputError, match="no evaluated predictions in .*bare"):
    web.evaluated_splits(bare_app)


def test_the_command_refuses_a_missing_workdir_in_one_line(tmp_path, capsys):
  assert web.main(["--workdir", str(tmp_path / "nothing")]) == 2
  err = capsys.readouterr().err
  assert "no config.json in workdir" in err and err.count("\n") == 1, err


def test_it_serves_this_machine_only_unless_asked(app, monkeypatch, caplog):
  launched = []

  class Stub:
    def queue(self, **kwargs):
      del kwargs

    def launch(self, **kwargs):
      launched.append(kwargs)

  monkeypatch.setattr(web, "build_blocks", lambda app: Stub())
  assert web.parse_args(["--workdir", "w"]).host == "127.0.0.1"
  with caplog.at_level(logging.WARNING, logger="tea_apps.web"):
    web.serve(app, "127.0.0.1", 1234, block=False)
    assert not caplog.records
    web.serve(app, "0.0.0.0", 1234, block=False)
  assert [k["server_name"] for k in launched] == ["127.0.0.1", "0.0.0.0"]
  assert len(caplog.records) == 1 and "anyone who can reach" in caplog.records[0].getMessage()


def test_the_summary_is_metrics_json(world, app):
  assert web.evaluated_splits(app) == ["test", "test_ood"]
  for split in ("test", "test_ood"):
    rows = web.summary_rows(app, split)
    assert [r["model"] for r in rows] == ["TEA (tea)", "EMB (emb)"]
    for row, workdir in zip(rows, (world["tea"], world["emb"])):
      with open(os.path.join(workdir, "metrics.json"), encoding="utf-8") as f:
        saved = json.load(f)
      metrics = saved["splits"][split]
      assert row["protocol"] == saved["protocol"] and row["step"] == metrics["step"]
      assert (row["R1@0.3"], row["R1@0.5"], row["R1@0.7"], row["mIoU"]) == (
          metrics["r1@0.3"], metrics["r1@0.5"], metrics["r1@0.7"], metrics["miou"])
      assert (row["evaluated"], row["annotated"]) == (metrics["queries"]["evaluated"],
                                                       metrics["queries"]["annotated"])
    assert f"{rows[0]['mIoU']:.2f}" in web.summary_markdown(rows, split)


def recomputed_ious(world, workdir: str, split: str) -> dict[int, float]:
  """{pair index: IoU} from the predicted seconds and the annotation file's moments."""
  data = world["data"]
  annotations = read_annotations(str(data / f"charades_sta_{split}.txt"),
                                 str(data / "charades.json"))
  truth = {p.query_index: (p.start, p.end) for p in annotations.pairs}
  ious = {}
  with open(os.path.join(workdir, f"predictions_{split}.jsonl"), encoding="utf-8") as f:
    for line in f:
      row = json.loads(line)
      (a, b), (c, d) = (row["pred_start"], row["pred_end"]), truth[row["pair_index"]]
      inter = max(0.0, min(b, d) - max(a, c))
      ious[row["pair_index"]] = inter / (max(b, d) - min(a, c))
  return ious


def test_the_histogram_counts_the_recomputed_ious(world, app):
  for split in ("test", "test_ood"):
    ious = recomputed_ious(world, world["tea"], split)
    counts, picture = web.iou_histogram(app, split, web.split_pairs(app, split))
    expected, _ = np.histogram(list(ious.values()), bins=10, range=(0, 1))
    np.testing.assert_array_equal(counts, expected)
    assert counts.sum() == len(ious) and os.path.getsize(picture) > 1000


def test_the_filters_keep_exactly_the_pairs_asked_for(world, app):
  pairs = web.split_pairs(app, "test")
  ious = recomputed_ious(world, world["tea"], "test")
  other = recomputed_ious(world, world["emb"], "test")
  assert sorted(p["pair_index"] for p in pairs) == sorted(ious)
  for low, high in ((0.0, 1.0), (0.0, 0.0), (0.1, 0.5), (0.3, 0.7), (0.5, 1.0)):
    kept = web.filter_pairs(pairs, low, high)
    assert [p["pair_index"] for p in kept] == sorted(
        k for k, iou in ious.items() if low - 1e-9 <= iou <= high + 1e-9)
  by_hand = {"workdir better": sorted(k for k in ious if ious[k] > other[k] + 1e-9),
             "compared better": sorted(k for k in ious if other[k] > ious[k] + 1e-9),
             "same IoU": sorted(k for k in ious if abs(ious[k] - other[k]) <= 1e-9)}
  for better, indices in by_hand.items():
    assert [p["pair_index"] for p in web.filter_pairs(pairs, better=better)] == indices
  assert sum(map(len, by_hand.values())) == len(pairs)
  lowest = web.filter_pairs(pairs, sort="IoU, lowest first")
  assert [p["iou"] for p in lowest] == sorted(p["iou"] for p in pairs)
  table = web.pair_table(lowest, compare=True)
  assert [row[0] for row in table] == [p["pair_index"] for p in lowest]
  assert [row[6] for row in table] == [round(other[p["pair_index"]], 4) for p in lowest]


def test_a_pairs_timeline_is_what_evaluation_predicted(world, app):
  with open(os.path.join(world["tea"], "predictions_test.jsonl"), encoding="utf-8") as f:
    row = [json.loads(line) for line in f][2]
  picture, result = web.pair_timeline(app, "test", row["pair_index"])
  assert result["query"] == row["query"] and result["video"].endswith(f"{row['video_id']}.mp4")
  top = result["moments"][0]
  assert (top["start"], top["end"]) == pytest.approx((row["pred_start"], row["pred_end"]),
                                                     abs=1e-3)
  assert result["iou"] == pytest.approx(row["iou"], abs=1e-4)
  assert os.path.getsize(picture) > 10_000


# ---------------------------------------------------------------------------------------------
# A real browser


def browser():
  """Headless Chromium through Selenium, or a loud skip saying what is missing."""
  try:
    from selenium import webdriver  # pylint: disable=import-outside-toplevel
  except ImportError:
    pytest.skip("SKIPPED (no browser): selenium is not installed (pip install selenium==4.50.0)")
  binary, driver = shutil.which("chromium"), shutil.which("chromedriver")
  if not binary or not driver:
    pytest.skip("SKIPPED (no browser): chromium and chromedriver are not on PATH (Debian: "
                "apt-get install -y chromium chromium-driver; .ci/run installs them as root)")
  options = webdriver.ChromeOptions()
  for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
               "--window-size=1400,1700"):
    options.add_argument(flag)
  options.binary_location = binary
  try:
    return webdriver.Chrome(options=options, service=webdriver.ChromeService(driver))
  except Exception as e:  # pylint: disable=broad-except
    pytest.skip(f"SKIPPED (no browser): Chromium did not start: {str(e).splitlines()[0]}")


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def table_rows(driver, elem_id: str) -> list[list[str]]:
  """The shown cells of a Gradio table, row by row."""
  from selenium.webdriver.common.by import By  # pylint: disable=import-outside-toplevel
  rows = driver.find_elements(By.CSS_SELECTOR, f"#{elem_id} [role=row].virtual-row")
  return [[cell.text for cell in row.find_elements(By.CSS_SELECTOR, "[role=gridcell]")]
          for row in rows]


def test_a_browser_asks_and_browses(world, tmp_path):
  driver = browser()
  # pylint: disable=import-outside-toplevel
  from selenium.webdriver.common.by import By
  from selenium.webdriver.common.keys import Keys
  from selenium.webdriver.support.ui import WebDriverWait
  port = free_port()
  app = make_app(world, tmp_path)
  shots = pathlib.Path(os.environ.get("TEA_WEB_SCREENSHOTS") or tmp_path)
  blocks = web.serve(app, "127.0.0.1", port, block=False)
  try:
    driver.get(f"http://127.0.0.1:{port}")
    wait = WebDriverWait(driver, 300)
    text_of = lambda elem_id: driver.find_element(By.ID, elem_id).text
    choice = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#ask-video-id input"))
    choice.click()
    choice.send_keys("S0013", Keys.ENTER)
    driver.find_element(By.CSS_SELECTOR, "#ask-queries textarea").send_keys("\n".join(QUERIES))
    driver.find_element(By.ID, "ask-button").click()
    wait.until(lambda d: "click a row" in text_of("ask-status"))
    expected = api_rows(world, "S0013", QUERIES, app.args.top_k)
    shown = table_rows(driver, "ask-moments")
    assert [[row[0], int(row[1])] + [float(x) for x in row[2:]] for row in shown] == expected
    # A click on the second moment's row: the player jumps to its start.
    driver.find_elements(By.CSS_SELECTOR, "#ask-moments [role=row].virtual-row")[1] \
        .find_elements(By.CSS_SELECTOR, "[role=gridcell]")[2].click()
    wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#ask-seek input")
               .get_attribute("value") == f"{expected[1][2]:g}")
    played = wait.until(lambda d: d.execute_script(
        "const v = document.querySelector('#ask-player video'); "
        "return v && v.readyState > 0 ? v.currentTime : null;"))
    assert played >= expected[1][2] - 0.5
    driver.execute_script("document.querySelector('#ask-player video').pause()")
    driver.save_screenshot(str(shots / "web_ask.png"))
    # Browse: the summary of the first split is metrics.json's.
    tab = lambda name: next(t for t in driver.find_elements(By.CSS_SELECTOR, "button[role=tab]")
                            if t.text == name)
    tab("Browse").click()
    wait.until(lambda d: "R1@0.5" in text_of("browse-summary"))
    with open(os.path.join(world["tea"], "metrics.json"), encoding="utf-8") as f:
      test = json.load(f)["splits"]["test"]
    summary = text_of("browse-summary")
    line = next(line for line in summary.splitlines() if line.startswith("TEA (tea)"))
    assert line.split()[2:6] == [f"{test[k]:.2f}" for k in ("r1@0.3", "r1@0.5", "r1@0.7",
                                                               "miou")]
    assert len(table_rows(driver, "browse-pairs")) == test["count"]
    driver.find_elements(By.CSS_SELECTOR, "#browse-pairs [role=row].virtual-row")[0] \
        .find_elements(By.CSS_SELECTOR, "[role=gridcell]")[2].click()
    wait.until(lambda d: "timeline of test pair" in text_of("browse-status"))
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#browse-timeline img"))
    driver.save_screenshot(str(shots / "web_browse.png"))
    # No query: one line in the page, and the app goes on serving.
    tab("Ask").click()
    queries = driver.find_element(By.CSS_SELECTOR, "#ask-queries textarea")
    queries.send_keys(Keys.CONTROL, "a")
    queries.send_keys(Keys.DELETE)
    driver.find_element(By.ID, "ask-button").click()
    wait.until(lambda d: "type a query (one per line)" in text_of("ask-status"))
    queries.send_keys(QUERIES[0])
    driver.find_element(By.ID, "ask-button").click()
    wait.until(lambda d: "6 moments" not in text_of("ask-status")
               and "click a row" in text_of("ask-status"))
    assert [row[0] for row in table_rows(driver, "ask-moments")] == [QUERIES[0]] * 3
  finally:
    driver.quit()
    blocks.close()
  with socket.socket() as s:  # nothing is left serving
    assert s.connect_ex(("127.0.0.1", port)) != 0
