"""The device mesh of every tea_jax run (one `data` axis over all devices of all processes), and
the multi-host set-up."""

import jax


def make_mesh() -> jax.sharding.Mesh:
  """A 1-D mesh over every device of every process, axis `data`.

  Auto axis type: the jit shardings of tea_jax.train place parameters and batches, and XLA
  propagates the rest (JAX's default Explicit mode would ask every gather in the model for an
  output sharding).
  """
  return jax.make_mesh((jax.device_count(),), ("data",),
                       axis_types=(jax.sharding.AxisType.Auto,))


def initialize_distributed(config) -> None:
  """jax.distributed.initialize for multi-host runs (`config.distributed`), once per process."""
  if not config.get("distributed", False) or jax.distributed.is_initialized():
    return
  # Processes on CPUs exchange gradients over Gloo (GPUs use NCCL whatever this says).
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  # Unset values (None) are left to JAX's cluster detection.
  jax.distributed.initialize(
      coordinator_address=config.get("coordinator_address") or None,
      num_processes=config.get("num_processes") or None,
      process_id=None if config.get("process_id", -1) < 0 else config.process_id)


def is_primary() -> bool:
  """The files beside the checkpoints are written by process 0 only (Orbax coordinates its own)."""
  return jax.process_index() == 0

