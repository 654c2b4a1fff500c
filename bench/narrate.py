"""Narration throughput: the static-cache decoder (CUDA graph, compiled regions) beside
model.generate, then the whole narrate command on real videos.

    python bench/narrate.py [--model MODEL_DIR | --architecture tiny|llava-1.5-7b|llava-1.5-13b]
                            [--batch-sizes auto,64,128] [--new-tokens 60] [--frames 256]
                            [--paths fast,generate] [--no-compile]
                            [--end-to-end [--videos N] --seconds 16 --decode-workers 2,4]

Without --model, a randomly initialised model of the given architecture is built from its config
(no weights needed; the 7b/13b architectures need a GPU's memory). Every caption is exactly
--new-tokens tokens long (min_new_tokens = max_new_tokens), so figures compare across paths and
cards; real runs stop each frame at its EOS. `auto` is the batch size the narrate command picks from
free device memory. Image preprocessing is done before the clock starts (the command hides it
behind generation; --end-to-end measures that).

First, on any device, a float32 tiny LLaVA checks that the fast path (with CUDA graphs and
compilation when on CUDA, as timed below) gives model.generate's tokens, with left padding and
early EOS; the script stops if it does not.

Columns: frames/s; prefill s and decode ms/step per batch (model.generate: a 1-token generate for
the prefill, the rest spread over the other steps); warm-up s (first batch: graph capture,
compilation); peak GiB allocated; "= generate" the share of frames whose tokens equal
model.generate's in the same batch (random bf16 weights give near-tied logits, so below 100% there
says nothing; the float32 check above is the test).

With --end-to-end it also times `data_prep.narrate`'s pipeline (PyAV decoding threads, image
preprocessing one batch ahead, generation, fsync'ed output lines) on generated 640x480 30 fps
videos at the batch size the command picks (auto): decoding and preprocessing are hidden when its
frames/s approach the model-only figure of that batch size.
"""

import argparse
import math
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from data_prep.narration.generation import GreedyDecoder  # noqa: E402
from data_prep.narration.narrators import LlavaNarrator  # noqa: E402
from data_prep.testing import random_mllm  # noqa: E402

GIB = 1 << 30


def parse_args():
  """The benchmark's flags."""
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--model", help="local LLaVA model directory (default: random weights)")
  parser.add_argument("--architecture", default="tiny", choices=sorted(random_mllm.ARCHITECTURES))
  parser.add_argument("--batch-sizes", default="auto,16,64,128",
                      help="comma-separated; auto = the narrate command's choice")
  parser.add_argument("--new-tokens", type=int, default=60)
  parser.add_argument("--frames", type=int, default=0,
                      help="frames timed per row (default: 3 batches, at least 32 frames)")
  parser.add_argument("--paths", default="fast,generate")
  parser.add_argument("--no-compile", action="store_true", help="fast path without torch.compile")
  parser.add_argument("--device", default="auto")
  parser.add_argument("--dtype", default="auto")
  parser.add_argument("--end-to-end", action="store_true",
                      help="also time data_prep.narrate on generated videos")
  parser.add_argument("--videos", type=int, default=0,
                      help="generated videos (--end-to-end; default: 4 batches' worth)")
  parser.add_argument("--seconds", type=int, default=16, help="length of each generated video")
  parser.add_argument("--decode-workers", default="2,4")
  return parser.parse_args()


def sync(device) -> None:
  """Waits for the device's queued work (timings on CUDA)."""
  if device.type == "cuda":
    torch.cuda.synchronize(device)


def check_fast_path(device: torch.device, compile_regions: bool) -> None:
  """Stops the benchmark unless the fast path, configured as timed, gives model.generate's
  tokens on a float32 tiny LLaVA (left-padded prompts, rows ending at different steps)."""
  model, processor = random_mllm.build_llava("tiny", seed=7)
  random_mllm.spread_weights(model, 0.2, 7)
  model.to(device)
  rng = np.random.default_rng(7)
  prompts = random_mllm.VARIED_PROMPTS
  frames = [Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)) for _ in prompts]
  inputs = processor(images=frames, text=prompts, padding=True, return_tensors="pt").to(device)
  echoed, config = inputs["input_ids"].shape[1], model.generation_config

  def reference():
    """model.generate's new tokens for the check's inputs."""
    with torch.inference_mode():
      return model.generate(**inputs, do_sample=False, num_beams=1, max_new_tokens=16)[:, echoed:]

  tokens = reference().cpu()
  later = tokens[:, 1:]
  candidates = later[(later != config.pad_token_id) & ~torch.isin(later, tokens[:, 0])]
  values, counts = torch.unique(candidates, return_counts=True)
  config.eos_token_id = values[counts.argsort(descending=True)][:2].tolist()  # rows end early
  expected = reference().cpu()
  decoder = GreedyDecoder(model, 16, compile=compile_regions and device.type == "cuda")
  got = [decoder.generate(inputs), decoder.generate(inputs)]  # captured graph replayed again
  setup = (f"CUDA graph {decoder.cuda_graphs}, compiled regions {decoder.compiled}, "
           f"{tuple(expected.shape)} tokens")
  if all(g.shape == expected.shape and torch.equal(g, expected) for g in got):
    print(f"fast path = model.generate on a float32 tiny LLaVA ({setup}): OK")
    return
  print(f"fast path != model.generate on a float32 tiny LLaVA ({setup}):\n"
        f"generate:\n{expected}\nfast:\n{got[0]}\nfast, again:\n{got[1]}")
  sys.exit(1)


def build_narrators(args):
  """(fast narrator, generate narrator) sharing one model."""
  if args.model:
    fast = LlavaNarrator(args.model, args.device, args.dtype, args.new_tokens, fast=False)
  else:
    on_cuda = torch.cuda.is_available() and args.device != "cpu"
    with torch.device("cuda" if on_cuda else "cpu"):
      components = random_mllm.build_llava(args.architecture, vocab_size=32064)
    fast = LlavaNarrator(None, args.device, args.dtype, args.new_tokens, components=components,
                         fast=False)
  fast.model.generation_config.min_new_tokens = args.new_tokens  # every caption the same length
  slow = LlavaNarrator(None, str(fast.device), str(fast.dtype).split(".")[-1], args.new_tokens,
                       components=(fast.model, fast.processor), fast=False)
  return fast, slow


def batches_of(narrator, images, batch: int, frames: int) -> list:
  """Prepared inputs on the device: enough batches for `frames` frames (at least 3 batches)."""
  count = max(3, math.ceil(frames / batch))
  return [narrator.to_device(narrator.prepare([images[(k * batch + i) % len(images)]
                                              for i in range(batch)]))
          for k in range(count)]


def reset_peak(device) -> None:
  """Starts a new peak-memory measurement."""
  if device.type == "cuda":
    torch.cuda.reset_peak_memory_stats(device)


def time_fast(narrator, batches) -> dict:
  """Seconds for `batches` with the static-cache decoder, its prefill and decode-step times."""
  decoder = narrator.decoder
  decoder.release()  # a cache of its own per batch size (padding to a larger one would cost)
  decoder.measure = True
  start = time.perf_counter()
  first = decoder.generate(batches[0])
  warm_up = time.perf_counter() - start
  reset_peak(narrator.device)
  prefill = decode = steps = 0.0
  start = time.perf_counter()
  for inputs in batches:
    decoder.generate(inputs)
    prefill += decoder.timings["prefill_s"]
    decode += decoder.timings["decode_s"]
    steps += decoder.timings["decode_steps"]
  sync(narrator.device)
  seconds = time.perf_counter() - start
  return {"seconds": seconds, "prefill_s": prefill / len(batches),
          "step_ms": 1000 * decode / max(steps, 1), "warm_up_s": warm_up, "tokens": first}


def time_generate(narrator, batches, new_tokens: int) -> dict:
  """The same for model.generate: its prefill timed as a one-token generate."""
  model = narrator.model

  def run(inputs, tokens):
    """model.generate's new tokens, `tokens` of them, synchronised."""
    out = model.generate(**inputs, do_sample=False, num_beams=1, max_new_tokens=tokens,
                         min_new_tokens=tokens)
    sync(narrator.device)
    return out[:, inputs["input_ids"].shape[1]:]

  start = time.perf_counter()
  first = run(batches[0], new_tokens).cpu()
  warm_up = time.perf_counter() - start
  reset_peak(narrator.device)
  start = time.perf_counter()
  run(batches[0], 1)
  prefill = time.perf_counter() - start
  start = time.perf_counter()
  for inputs in batches:
    run(inputs, new_tokens)
  seconds = time.perf_counter() - start
  step_ms = 1000 * (seconds / len(batches) - prefill) / max(new_tokens - 1, 1)
  return {"seconds": seconds, "prefill_s": prefill, "step_ms": step_ms, "warm_up_s": warm_up,
          "tokens": first}


def measure(path: str, narrator, images, batch: int, args) -> dict:
  """One row of the table (or the reason it has no figures)."""
  try:
    batches = batches_of(narrator, images, batch, args.frames or 32)
    with torch.inference_mode():
      row = (time_fast(narrator, batches) if path == "fast"
             else time_generate(narrator, batches, args.new_tokens))
  except torch.OutOfMemoryError:
    batches = None
    if narrator.decoder is not None:
      narrator.decoder.release()
    torch.cuda.empty_cache()
    return {"path": path, "batch": batch, "note": "out of memory"}
  row.update(path=path, batch=batch, fps=batch * len(batches) / row["seconds"])
  if narrator.device.type == "cuda":
    row["peak_gib"] = torch.cuda.max_memory_allocated(narrator.device) / GIB
  return row


def print_table(rows: list[dict]) -> None:
  """The rows as a markdown table, both paths of a batch size together."""
  generate_tokens = {r["batch"]: r.get("tokens") for r in rows if r["path"] == "generate"}
  print("| path | batch | frames/s | prefill s | decode ms/step | warm-up s | peak GiB | "
        "= generate | note |")
  print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
  for r in sorted(rows, key=lambda r: (r["batch"], r["path"])):
    if "fps" not in r:
      print(f"| {r['path']} | {r['batch']} | - | - | - | - | - | - | {r['note']} |")
      continue
    same = "-"
    reference = generate_tokens.get(r["batch"])
    if r["path"] == "fast" and reference is not None:
      tokens = r["tokens"]
      same = f"{100 * float((tokens == reference).all(-1).float().mean()):.0f}%"
    peak = f"{r['peak_gib']:.1f}" if "peak_gib" in r else "-"
    print(f"| {r['path']} | {r['batch']} | {r['fps']:.2f} | {r['prefill_s']:.3f} | "
          f"{r['step_ms']:.1f} | {r['warm_up_s']:.1f} | {peak} | {same} | |")


def main():
  """Check, model-only rows, then the end-to-end pipeline."""
  args = parse_args()
  fast, slow = build_narrators(args)
  print(f"model={args.model or args.architecture} device={fast.device} dtype={fast.dtype} "
        f"new_tokens={args.new_tokens} torch={torch.__version__} "
        f"transformers={__import__('transformers').__version__}"
        + (f" ({torch.cuda.get_device_name(fast.device)})" if fast.device.type == "cuda" else ""))
  check_fast_path(fast.device, not args.no_compile)
  auto = fast.auto_batch_size()
  sizes = [auto if b == "auto" else int(b) for b in args.batch_sizes.split(",")]
  if args.end_to_end:
    sizes.append(auto)  # the end-to-end run uses the command's choice: its model-only figure
  sizes = list(dict.fromkeys(sizes))
  print(f"batch sizes {sizes} ({args.batch_sizes}; auto = {auto}); prompt "
        f"{fast.prepare([Image.new('RGB', (64, 64))])['input_ids'].shape[1]} tokens")
  rng = np.random.default_rng(0)
  images = [Image.fromarray(rng.integers(0, 255, (336, 448, 3), dtype=np.uint8))
            for _ in range(32)]
  paths = args.paths.split(",")
  rows = []
  if "generate" in paths:  # first: the fast path compiles the model's layers in place
    rows += [measure("generate", slow, images, b, args) for b in sizes]
  if "fast" in paths:
    if fast.device.type == "cuda":
      torch.cuda.empty_cache()  # the generate rows' blocks
    fast.decoder = GreedyDecoder(fast.model, args.new_tokens,
                                 compile=False if args.no_compile else None)
    rows += [measure("fast", fast, images, b, args) for b in sizes]
  print_table(rows)
  if args.end_to_end:
    model_only = {r["batch"]: r.get("fps") for r in rows if r["path"] == "fast"}
    end_to_end(fast, args, auto, model_only.get(auto))


# PyAV (av) is imported only by the end-to-end mode: the model-only figures need no video library.


def write_video(path: str, seconds: int, rng) -> None:
  """A 640x480, 30 fps H.264 video (MPEG-4 part 2 if this FFmpeg has no libx264) of moving noise."""
  import av  # pylint: disable=import-outside-toplevel
  codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
  base = rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)
  with av.open(path, "w") as container:
    stream = container.add_stream(codec, rate=30)
    stream.width, stream.height, stream.pix_fmt = 640, 480, "yuv420p"
    for i in range(seconds * 30):
      frame = av.VideoFrame.from_ndarray(np.roll(base, 4 * i, axis=1), format="rgb24")
      for packet in stream.encode(frame):
        container.mux(packet)
    for packet in stream.encode():
      container.mux(packet)


def end_to_end(narrator, args, batch: int, model_only_fps) -> None:
  """The narrate command's pipeline on generated videos at `batch` frames per batch."""
  from data_prep.narration import pipeline  # pylint: disable=import-outside-toplevel
  if narrator.decoder is None:
    narrator.decoder = GreedyDecoder(narrator.model, args.new_tokens,
                                     compile=False if args.no_compile else None)
  count = args.videos or max(2, math.ceil(4 * batch / args.seconds))
  rng = np.random.default_rng(1)
  narrator.decoder.release()
  narrator.generate(narrator.prepare([Image.new("RGB", (336, 336))] * batch))  # capture, compile
  with tempfile.TemporaryDirectory() as folder:
    videos = []
    for k in range(count):
      path = os.path.join(folder, f"video{k}.mp4")
      write_video(path, args.seconds, rng)
      videos.append((f"video{k}", path))
    print(f"\nend to end: {count} videos x {args.seconds} s, 640x480, 30 fps, batch {batch}; "
          f"model only: {model_only_fps or float('nan'):.2f} frames/s")
    print("| batch | decode workers | frames/s | vs model only |")
    print("| --- | --- | --- | --- |")
    for workers in [int(w) for w in args.decode_workers.split(",")]:
      out = os.path.join(folder, f"narratives-{workers}.jsonl")
      summary = pipeline.narrate(narrator, videos, out, batch_size=batch, progress=False,
                                 decode_workers=workers)
      fps = summary["frames_per_second"]
      ratio = f"{100 * fps / model_only_fps:.0f}%" if model_only_fps else "-"
      print(f"| {batch} | {workers} | {fps:.2f} | {ratio} |")


if __name__ == "__main__":
  main()
