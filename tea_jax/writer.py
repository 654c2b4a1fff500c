"""One metric writer: TensorBoard event files and the console."""

import logging
import os

import tensorflow as tf

log = logging.getLogger("tea_jax")


class MetricWriter:
  """Writes scalars to `<logdir>` (TensorBoard) and logs them on the console."""

  def __init__(self, logdir: str, enabled: bool = True):
    self.enabled = enabled
    self._writer = tf.summary.create_file_writer(logdir) if enabled else None
    if enabled:
      os.makedirs(logdir, exist_ok=True)

  def scalars(self, step: int, metrics: dict, prefix: str = "", console: bool = True) -> None:
    if not self.enabled:
      return
    with self._writer.as_default():
      for name, value in metrics.items():
        tf.summary.scalar(f"{prefix}{name}", float(value), step=step)
    self._writer.flush()
    if console:
      text = " ".join(f"{prefix}{k}={float(v):.4g}" for k, v in metrics.items())
      log.info("step %d: %s", step, text)

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()
