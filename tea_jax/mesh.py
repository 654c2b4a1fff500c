"""The device mesh of every tea_jax run: one `data` axis over all devices of all processes."""

import jax


def make_mesh() -> jax.sharding.Mesh:
  """A 1-D mesh over every device of every process, axis `data`.

  Auto axis type: the jit shardings of tea_jax.train place parameters and batches, and XLA
  propagates the rest (JAX's default Explicit mode would ask every gather in the model for an
  output sharding).
  """
  return jax.make_mesh((jax.device_count(),), ("data",),
                       axis_types=(jax.sharding.AxisType.Auto,))
