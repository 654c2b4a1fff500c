"""Evaluation: the jitted eval step, per-split metrics and predictions, and `--mode eval`.

Predictions and metrics use the same seconds: `metrics.index_to_time` of the decoded span
(docs/design.md section 11).
"""

from __future__ import annotations

import contextlib
import math
import os
from typing import TYPE_CHECKING

import jax
import ml_collections
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from tqdm import tqdm

from tea_jax import checkpointing, compilation_cache, config_checks, metrics, trainfree
from tea_jax import workdir as workdir_files
from tea_jax.data.prefetch import to_device
from tea_jax.data.schema import records_dir
from tea_jax.errors import InputError
from tea_jax.mesh import initialize_distributed, is_primary, make_mesh
from tea_jax.model.config import ModelConfig
from tea_jax.model.tea import TEA

if TYPE_CHECKING:
  from tea_jax.data.input_pipeline import Records


def make_eval_step(config, mesh):
  """jit(forward + decoding) with a data-sharded batch."""
  model = TEA(ModelConfig.from_config(config))

  def eval_step(variables, batch):
    out = model.apply(variables, batch, train=False)
    start, end, score = metrics.decode_spans(out["start_prob"], out["end_prob"])
    return {"start": start, "end": end, "score": score}

  replicated = NamedSharding(mesh, P())
  data = NamedSharding(mesh, P("data"))
  return jax.jit(eval_step, in_shardings=(replicated, data), out_shardings=replicated)


def _predictions(batch: dict, out: dict) -> list[dict]:
  """One prediction record per valid example of a decoded batch."""
  v_len = batch["video_mask"].sum(axis=1)
  start_s, end_s = metrics.index_to_time(out["start"], out["end"], v_len, batch["duration"])
  overlap = metrics.iou(start_s, end_s, batch["start_time"], batch["end_time"])
  return [{"video_id": str(batch["video_id"][i]), "query": str(batch["query"][i]),
           "pair_index": int(batch["pair_index"][i]),
           "query_index": int(batch["query_index"][i]), "qid": str(batch["qid"][i]),
           "pred_start": float(start_s[i]), "pred_end": float(end_s[i]),
           "true_start": float(batch["start_time"][i]), "true_end": float(batch["end_time"][i]),
           "score": float(out["score"][i]), "iou": float(overlap[i])}
          for i in np.nonzero(batch["valid"] > 0)[0]]


def evaluate_split(eval_step, variables, records: Records, split: str, batch_size: int, mesh,
                   progress: bool = True) -> tuple[dict, list[dict]]:
  """Metrics and per-pair predictions of one split (padding examples not counted)."""
  preds = []
  n = records.size(split)
  for batch in tqdm(records.eval_batches(split, batch_size), total=math.ceil(n / batch_size),
                    desc=f"eval {split}", leave=False, disable=not progress):
    out = jax.device_get(eval_step(variables, to_device(batch, mesh, whole=True)))
    preds += _predictions(batch, out)
  if len(preds) != n:
    raise RuntimeError(f"evaluated {len(preds)} pairs of {split}, expected {n}")
  preds = by_query(preds)
  return metrics.summarise(np.array([p["iou"] for p in preds])), preds


def by_query(pair_predictions: list[dict]) -> list[dict]:
  """One prediction per query, in record order. A query with several windows (a pair each, with
  the same prediction) is scored against the window its prediction matches best, as Moment-DETR's
  evaluator does; its line lists all of them under "windows"."""
  queries: dict[int, dict] = {}
  for p in pair_predictions:
    window = [p["true_start"], p["true_end"]]
    if p["query_index"] not in queries:
      queries[p["query_index"]] = {**p, "windows": [window]}
      continue
    best = queries[p["query_index"]]
    best["windows"].append(window)
    if p["iou"] > best["iou"]:
      best.update(pair_index=p["pair_index"], true_start=p["true_start"],
                  true_end=p["true_end"], iou=p["iou"])
  out = list(queries.values())
  for q in out:
    if len(q["windows"]) == 1:
      del q["windows"]
  return out


def split_result(summary: dict, step: int, annotated: int) -> dict:
  """metrics.json's entry of one split: the summary, the step it was evaluated at, the queries
  evaluated and annotated, and a note when some were left out."""
  out = {**summary, "step": step,
         "queries": {"evaluated": summary["count"], "annotated": annotated}}
  if summary["count"] < annotated:
    out["note"] = (f"{summary['count']} of {annotated} queries evaluated (the others' videos lack "
                   f"features or narratives: data.missing)")
  return out


REFERENCE_NOTE = ("each split reports its own best evaluation by R1@0.3 + R1@0.5 + R1@0.7 + mIoU "
                  "on that same split, evaluated every steps_per_epoch // 2 steps and at each "
                  "epoch end (EMB's training loop, where the paper's numbers come from): this "
                  "selects on the test split and is optimistic")


def reported_checkpoints(config, workdir: str, step: int | None = None) -> dict[int, list[str]]:
  """{checkpoint step: the splits it reports}: `step` for every split when given; else the
  selection split's best ("val", and a workdir without evaluations: its latest), or each split's
  own best ("reference")."""
  splits = list(config.data.eval_splits)
  if step is not None:
    return {step: splits}
  with checkpointing.manager(workdir, read_only=True) as mngr:
    if not mngr.all_steps():
      raise FileNotFoundError(f"no checkpoint in workdir {workdir!r}")
    if config.get("protocol", "val") == "reference":
      chosen = {split: checkpointing.best_step(mngr, (split, checkpointing.REFERENCE_METRIC))
                for split in splits}
    else:
      best = checkpointing.best_step(mngr, checkpointing.selections(config)[0])
      chosen = {split: best for split in splits}
  groups: dict[int, list[str]] = {}
  for split, chosen_step in chosen.items():
    groups.setdefault(chosen_step, []).append(split)
  return groups


def selection_text(config, step: int | None) -> str:
  """What metrics.json says about how its checkpoints were chosen."""
  if step is not None:
    return f"checkpoint {step}, asked for"
  if config.get("protocol", "val") == "reference":
    return REFERENCE_NOTE
  return (f"checkpoint chosen by {config.selection_metric} on split "
          f"'{config.data.selection_split}', evaluated every {config.eval_every_epochs} epoch(s)")


def report(config, workdir: str, records: Records, mesh, progress: bool = True, eval_step=None,
           step: int | None = None) -> dict:
  """Evaluates every configured split with the checkpoint the protocol reports it with (or
  `step`), writes metrics.json and predictions_<split>.jsonl, and returns metrics.json's dict."""
  eval_step = eval_step or make_eval_step(config, mesh)
  protocol = config.get("protocol", "val")
  results = {}
  for chosen, splits in sorted(reported_checkpoints(config, workdir, step).items()):
    variables, _ = checkpointing.restore_variables(workdir, chosen)
    for split in splits:
      summary, preds = evaluate_split(eval_step, variables, records, split,
                                      config.eval_batch_size, mesh, progress)
      results[split] = split_result(summary, int(chosen), records.annotated_queries(split))
      if is_primary():
        workdir_files.write_predictions(workdir, split, [
            {**p, "step": int(chosen), "protocol": protocol} for p in preds])
  out = {"protocol": protocol, "selection": selection_text(config, step),
         "splits": {split: results[split] for split in config.data.eval_splits}}
  steps = {r["step"] for r in results.values()}
  if len(steps) == 1:
    out["step"] = steps.pop()
  if is_primary():
    workdir_files.write_metrics(workdir, out)
  return out


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str,
                        step: int | None = None, progress: bool = True) -> dict:
  """Evaluates every configured split of `workdir` as its training reported them (the
  protocol's checkpoints), or with checkpoint `step`; works on workdirs written by training and by
  tea_jax.import_emb (then `config` must name data). Returns {split: metrics}."""
  from tea_jax.data.input_pipeline import Records  # pylint: disable=import-outside-toplevel
  if trainfree.is_trainfree(config) or _trainfree_workdir(workdir):
    return evaluate_trainfree(config, workdir, progress)["splits"]
  initialize_distributed(config)
  saved = workdir_files.read_config(workdir)
  config = ml_collections.ConfigDict(config.to_dict())
  config.model = saved.model  # the checkpoint's architecture wins over the command line
  if saved.get("protocol"):
    config.protocol = saved.protocol  # and the protocol its checkpoints were kept by
  config_checks.check_experiment(config)
  compilation_cache.enable(config.get("compilation_cache") or None, workdir=workdir)
  with workdir_files.locked(workdir, "evaluation") if is_primary() else contextlib.nullcontext():
    records = Records(records_dir(config.data), config.data)
    records.check_fits(config.model)
    if config.model.vocab_size != records.meta["vocab_size"]:
      raise InputError(f"the checkpoint in {workdir} has a vocabulary of "
                       f"{config.model.vocab_size} ids but the records in {records.records_dir} "
                       f"have {records.meta['vocab_size']}")
    return report(config, workdir, records, make_mesh(), progress, step=step)["splits"]


# ---------------------------------------------------------------------------------------------
# The train-free retriever (tea_jax/trainfree.py, docs/design.md section 21)

# metrics.json's protocol of the train-free retriever: nothing is selected on any split.
TRAINFREE_PROTOCOL = "trainfree"
TRAINFREE_SELECTION = ("no training and no checkpoint: the query's similarity to the narratives, "
                       "searched for its best segment (train-free retriever)")


def _trainfree_workdir(workdir: str) -> bool:
  """Whether `workdir` holds a train-free retriever's config.json."""
  try:
    return trainfree.is_trainfree(workdir_files.read_config(workdir))
  except FileNotFoundError:
    return False


def trainfree_spans(batch: dict, table: np.ndarray, settings: trainfree.SearchSettings,
                    split: str = "", stored: dict | None = None) -> dict[str, np.ndarray]:
  """{start, end, score} (B,) of a records batch, as eval_step decodes a trained model's: each
  valid example's best segment on its own snippets (padding examples get (0, 0, 0)). `stored`:
  the precomputed curves of the split's pairs (trainfree.read_curves), when weighted."""
  size = len(batch["valid"])
  out = {"start": np.zeros(size, np.int64), "end": np.zeros(size, np.int64),
         "score": np.zeros(size, np.float64)}
  for i in np.nonzero(batch["valid"] > 0)[0]:
    v_len = int(batch["video_mask"][i].sum())
    query = trainfree.mean_word_vector(batch["word_ids"][i][batch["query_mask"][i] > 0], table)
    glove = trainfree.cosine_relevance(query, batch["narrative"][i, :v_len])
    pair = int(batch["pair_index"][i])
    curves, weights = trainfree.pair_curves(
        settings, glove, (stored or {}).get((split, pair)), f"{split} pair {pair}", v_len)
    best = trainfree.search(trainfree.combine(curves, weights), settings, top_k=1)[0]
    out["start"][i], out["end"][i], out["score"][i] = best.start, best.end, best.score
  return out


def _scores_path(config) -> str:
  """config.trainfree.scores, joined to data.root unless absolute."""
  path = config.trainfree.scores
  return path if os.path.isabs(path) else os.path.join(config.data.root, path)


def evaluate_trainfree(config: ml_collections.ConfigDict, workdir: str,
                       progress: bool = True) -> dict:
  """Evaluates the train-free retriever on every configured split of the records, writing what a
  trained model's evaluation writes (config.json, vocab.json, word_vectors.npy, metrics.json,
  predictions_<split>.jsonl; step 0, no checkpoint). Returns metrics.json's dict."""
  from tea_jax.data.input_pipeline import Records  # pylint: disable=import-outside-toplevel
  if not trainfree.is_trainfree(config):
    saved = workdir_files.read_config(workdir)
    config = ml_collections.ConfigDict(config.to_dict())
    config.variant, config.trainfree = saved.variant, saved.trainfree
  config_checks.check_experiment(config, devices=1)
  settings = trainfree.SearchSettings.from_config(config.trainfree)
  with workdir_files.locked(workdir, "evaluation"):
    records = Records(records_dir(config.data), config.data)
    records.check_fits(config.model)
    if records.meta["narrative_dim"] != records.meta["word_dim"]:
      raise InputError(f"the records in {records.records_dir} hold {records.meta['narrative_dim']}"
                       f"-d narratives but {records.meta['word_dim']}-d word vectors: the "
                       f"train-free retriever compares them, so they must come from one encoder")
    config = ml_collections.ConfigDict(config.to_dict())
    config.model.vocab_size = records.meta["vocab_size"]
    table = records.word_vectors()
    stored = None
    if settings.scores:
      stored = trainfree.read_curves(_scores_path(config))
    workdir_files.write_config(workdir, config)
    workdir_files.write_vocabulary(workdir, config.model.vocab_size, records.vocabulary(),
                                   records.records_dir)
    workdir_files.write_word_vectors(workdir, table)
    results = {}
    for split in config.data.eval_splits:
      preds = []
      for batch in tqdm(records.eval_batches(split, config.eval_batch_size),
                        total=math.ceil(records.size(split) / config.eval_batch_size),
                        desc=f"train-free {split}", leave=False, disable=not progress):
        preds += _predictions(batch, trainfree_spans(batch, table, settings, split, stored))
      preds = by_query(preds)
      summary = metrics.summarise(np.array([p["iou"] for p in preds]))
      results[split] = split_result(summary, 0, records.annotated_queries(split))
      workdir_files.write_predictions(workdir, split, [
          {**p, "step": 0, "protocol": TRAINFREE_PROTOCOL} for p in preds])
    out = {"protocol": TRAINFREE_PROTOCOL, "selection": TRAINFREE_SELECTION,
           "splits": results, "step": 0}
    workdir_files.write_metrics(workdir, out)
    return out
