"""The training loop's wiring, observed from outside the loop and checked against schedules worked
out here (docs/design.md sections 0, 10, 17 and 18): the IoU threshold passed to each step, the
learning rate each update applies, the dropout masks, the data order, and where a resumed run
starts.

A spy wraps the jitted step that `tea_jax.train.make_train_step` returns and records what the
loop hands it (state step, threshold, batch), what comes back (loss, parameters), and the input
and output of one dropout layer (caught while the step is traced and returned beside the loss's
parts, so the three runs compile one program).
"""

import hashlib
import math

import flax.linen as nn
import jax
import numpy as np
import pytest
from conftest import tiny_train_config

from tea_jax import losses, train
from tea_jax.model.layers import Dropout

EPOCHS = 4
BATCH = 8
# Weight decay alone moves the UNK row (no training query has an unknown word, so its gradient is
# exactly 0): unk <- unk (1 - lr_k wd). A large wd makes lr_k readable to float32 precision.
WEIGHT_DECAY = 10.0
STOP = 6  # the interrupted run stops here, mid-epoch


def config_for(root, **overrides):
  config = tiny_train_config(root, num_epochs=EPOCHS, batch_size=BATCH,
                             eval_every_epochs=EPOCHS, **overrides)
  config.optimizer.weight_decay = WEIGHT_DECAY
  return config


def fingerprint(batch) -> str:
  """A digest of what a batch holds (its device arrays carry no pair ids)."""
  digest = hashlib.sha256()
  for key in sorted(batch):
    digest.update(key.encode() + np.asarray(batch[key]).tobytes())
  return digest.hexdigest()


class StepSpy:
  """Records every call of the training step the loop makes."""

  def __init__(self):
    self.calls = []
    self._dropout = None

  def _intercept(self, next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if isinstance(context.module, Dropout) and context.module.scope.path[0] == "video_projection":
      self._dropout = (args[0], out)  # traced values, handed out through the loss's parts
    return out

  def wrap_loss(self, total_loss):
    def spied_loss(config, outputs, batch, threshold):
      total, parts = total_loss(config, outputs, batch, threshold)
      dropout_in, dropout_out = self._dropout
      return total, dict(parts, dropout_in=dropout_in, dropout_out=dropout_out)

    return spied_loss

  def wrap(self, make_train_step):
    def make(config, tx, mesh):
      step_fn = make_train_step(config, tx, mesh)

      def spied(variables, train_state, batch, threshold):
        # Read before the call: the step donates its state.
        record = {"step": int(jax.device_get(train_state["step"])),
                  "threshold": np.asarray(threshold).item(),
                  "batch": fingerprint(batch),
                  "word_ids": np.asarray(batch["word_ids"]),
                  "query_mask": np.asarray(batch["query_mask"]),
                  "unk_before": np.asarray(variables["params"]["word_embedding"]["unk"])}
        with nn.intercept_methods(self._intercept):  # the step is traced at its first call
          new_vars, new_state, stats = step_fn(variables, train_state, batch, threshold)
        stats = dict(stats)
        record["dropout_in"] = np.asarray(stats.pop("dropout_in"))
        record["dropout_out"] = np.asarray(stats.pop("dropout_out"))
        record["loss"] = np.asarray(stats["loss"]).item()
        record["unk_after"] = np.asarray(new_vars["params"]["word_embedding"]["unk"])
        self.calls.append(record)
        return new_vars, new_state, stats

      return spied

    return make


def spied_run(root, workdir, **overrides):
  """(records of every executed step, train_and_evaluate's result)."""
  spy = StepSpy()
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(train, "make_train_step", spy.wrap(train.make_train_step))
    patch.setattr(losses, "total_loss", spy.wrap_loss(losses.total_loss))
    result = train.train_and_evaluate(config_for(root, **overrides), str(workdir), progress=False)
  return spy.calls, result


@pytest.fixture(scope="module")
def runs(train_data_root, tmp_path_factory):
  """A straight run, the same run stopped at STOP, and its resumption."""
  work = tmp_path_factory.mktemp("wiring")
  straight, result = spied_run(train_data_root, work / "straight")
  partial, partial_result = spied_run(train_data_root, work / "resumed", max_steps=STOP)
  resumed, resumed_result = spied_run(train_data_root, work / "resumed")
  return dict(straight=straight, partial=partial, resumed=resumed, result=result,
              partial_result=partial_result, resumed_result=resumed_result)


@pytest.fixture(scope="module")
def steps_per_epoch(train_data_root):
  """ceil(n_train / batch), n_train counted from the annotation file itself."""
  with open(train_data_root / "charades_sta_train.txt", encoding="utf-8") as f:
    pairs = sum(1 for line in f if line.strip())
  return math.ceil(pairs / BATCH), pairs


def expected_threshold(epoch):
  """EMB's schedule: 0.5 + 0.5 (1 - sigmoid((e / E - 0.5) / 0.05)), float64."""
  z = (epoch / EPOCHS - 0.5) / 0.05
  return 0.5 + 0.5 * (1.0 - 1.0 / (1.0 + math.exp(-z)))


def test_every_step_runs_once_in_order_with_its_epochs_threshold(runs, steps_per_epoch):
  per_epoch, _ = steps_per_epoch
  total = EPOCHS * per_epoch
  straight = runs["straight"]
  assert [c["step"] for c in straight] == list(range(total))
  assert runs["result"]["step"] == total
  thresholds = [c["threshold"] for c in straight]
  want = [expected_threshold(k // per_epoch) for k in range(total)]
  np.testing.assert_allclose(thresholds, want, rtol=1e-6)
  assert len({round(t, 6) for t in thresholds}) == EPOCHS  # the schedule moves every epoch
  for run in ("partial", "resumed"):
    np.testing.assert_allclose([c["threshold"] for c in runs[run]],
                               [want[c["step"]] for c in runs[run]], rtol=1e-6)


def observed_learning_rate(call) -> float:
  """lr_k from the update of the UNK row: unk_new = unk (1 - lr_k wd)."""
  before = call["unk_before"].astype(np.float64)
  after = call["unk_after"].astype(np.float64)
  return float(np.mean(1.0 - after / before)) / WEIGHT_DECAY


def test_learning_rate_decays_linearly_over_all_epochs(runs, steps_per_epoch):
  per_epoch, _ = steps_per_epoch
  total = EPOCHS * per_epoch  # S = num_epochs * ceil(n_train / batch), whatever max_steps is
  peak = config_for(".").optimizer.learning_rate
  for run in ("straight", "partial", "resumed"):
    for call in runs[run]:
      # The observation holds only while no training query has an unknown word.
      assert not np.any((call["word_ids"] == 1) & (call["query_mask"] > 0))
      k = call["step"]
      np.testing.assert_allclose(observed_learning_rate(call), peak * (total - k) / total,
                                 rtol=1e-3, err_msg=f"{run} run, update {k}")
  straight = runs["straight"]
  assert [straight[k]["step"] for k in (0, total // 2, total - 1)] == [0, total // 2, total - 1]


def kept_and_observed(call):
  """(whether each element was kept, where it can be seen: its input is not 0)."""
  return call["dropout_out"] != 0, call["dropout_in"] != 0


def test_dropout_masks_differ_between_steps(runs):
  straight = runs["straight"]
  for a, b in zip(straight, straight[1:]):
    kept_a, seen_a = kept_and_observed(a)
    kept_b, seen_b = kept_and_observed(b)
    both = seen_a & seen_b
    assert both.sum() > 1000
    differ = float(np.mean(kept_a[both] != kept_b[both]))
    # Independent masks at rate 0.2 differ on 2 * 0.2 * 0.8 = 32% of the elements.
    assert 0.2 < differ < 0.45, (a["step"], differ)
    assert 0.7 < float(np.mean(kept_a[seen_a])) < 0.9


def test_a_resumed_run_starts_at_the_checkpoint_and_continues_the_straight_run(
    runs, steps_per_epoch):
  per_epoch, _ = steps_per_epoch
  total = EPOCHS * per_epoch
  partial, resumed, straight = runs["partial"], runs["resumed"], runs["straight"]
  assert [c["step"] for c in partial] == list(range(STOP))
  assert runs["partial_result"]["step"] == STOP
  assert resumed[0]["step"] == STOP  # the first step it executes is the checkpoint's
  assert [c["step"] for c in resumed] == list(range(STOP, total))
  assert runs["resumed_result"]["metrics"] == runs["result"]["metrics"]
  for call, same in zip(partial + resumed, straight, strict=True):
    assert call["step"] == same["step"]
    assert call["batch"] == same["batch"]  # the batch it would have seen
    assert call["loss"] == same["loss"], call["step"]
    np.testing.assert_array_equal(call["dropout_out"], same["dropout_out"])  # the same masks
  assert len({c["batch"] for c in straight}) == total  # a fresh batch every step
