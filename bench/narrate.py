"""Narration throughput: the static-cache decoder (CUDA graph, compiled regions) beside
model.generate, then the whole narrate command on real videos.

    python bench/narrate.py [--model MODEL_DIR | --architecture tiny|llava-1.5-7b|llava-1.5-13b]
                            [--batch-sizes auto,64,128] [--new-tokens N] [--frames 256]
                            [--lengths forced|eos [--length-mean 75 --length-sd 20 |
                             --lengths-from NARRATIVES.jsonl]]
                            [--paths fast,generate] [--no-compile]
                            [--end-to-end [--videos N] --seconds 16 --decode-workers 2,4]

Without --model, a randomly initialised model of the given architecture is built from its config
(no weights needed; the 7b/13b architectures need a GPU's memory). Two length modes:
- forced (the default): every caption is exactly --new-tokens tokens long (default 60;
  min_new_tokens = max_new_tokens), so figures compare across paths and cards;
- eos: captions end at EOS, as real runs do, under the narrate command's cap (--new-tokens, default
  192): each frame's length is drawn from a normal distribution (--length-mean, --length-sd, in
  tokens; an assumption for "two or three sentences", not a measurement) or from the captions of a
  real narration output (--lengths-from, counted with the model's tokenizer: use it with --model),
  and the model's output head is made to choose EOS after that many tokens. A batch then runs
  until its longest caption ends (the fast path checks every 8 steps on CUDA), which forced
  lengths hide; the cache is sized for the cap, so `auto` batches are smaller.
`auto` is the batch size the narrate command picks from free device memory. Image preprocessing is
done before the clock starts (the command hides it behind generation; --end-to-end measures that).

First, on any device, a float32 tiny LLaVA checks that the fast path (with CUDA graphs and
compilation when on CUDA, as timed below) gives model.generate's tokens, with left padding and
early EOS; the script stops if it does not.

Columns: frames/s; prefill s and decode ms/step per batch (model.generate: a 1-token generate for
the prefill, the rest spread over the other steps); steps/batch (decode steps a batch ran);
warm-up s (first batch: graph capture,
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

from data_prep.narration.generation import GreedyDecoder, eos_ids  # noqa: E402
from data_prep.narration.narrators import LlavaNarrator  # noqa: E402
from data_prep.narration.settings import DEFAULT_MAX_NEW_TOKENS  # noqa: E402
from data_prep.testing import random_mllm  # noqa: E402

GIB = 1 << 30


def parse_args():
  """The benchmark's flags."""
  parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
  parser.add_argument("--model", help="local LLaVA model directory (default: random weights)")
  parser.add_argument("--architecture", default="tiny", choices=sorted(random_mllm.ARCHITECTURES))
  parser.add_argument("--batch-sizes", default="auto,16,64,128",
                      help="comma-separated; auto = the narrate command's choice")
  parser.add_argument("--new-tokens", type=int,
                      help=f"forced: every caption's length (default 60); eos: the cap (default "
                           f"{DEFAULT_MAX_NEW_TOKENS})")
  parser.add_argument("--lengths", choices=("forced", "eos"), default="forced")
  parser.add_argument("--length-mean", type=float, default=75.0,
                      help="eos: mean caption length in tokens (assumed)")
  parser.add_argument("--length-sd", type=float, default=20.0)
  parser.add_argument("--lengths-from", help="eos: draw lengths from the captions of this "
                                             "narration output (tokenised by --model's tokenizer)")
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
  args = parser.parse_args()
  if args.new_tokens is None:
    args.new_tokens = 60 if args.lengths == "forced" else DEFAULT_MAX_NEW_TOKENS
  return args


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
  if args.lengths == "forced":
    fast.model.generation_config.min_new_tokens = args.new_tokens  # every caption the same length
  slow = LlavaNarrator(None, str(fast.device), str(fast.dtype).split(".")[-1], args.new_tokens,
                       components=(fast.model, fast.processor), fast=False)
  return fast, slow


class EndAtLengths(torch.nn.Module):
  """Wraps a model's output head so that row i's caption ends with EOS after lengths[i] tokens:
  generation call k (the prefill is call 0) forces EOS in the rows whose length is k and bans it
  before. The call counter and the lengths are device buffers updated in place, so a captured CUDA
  graph replays them; `start` readies them for the next batch."""

  def __init__(self, head, eos: int, capacity: int, device):
    super().__init__()
    self.head, self.eos = head, eos
    self.lengths = torch.zeros(capacity, dtype=torch.long, device=device)
    self.calls = torch.zeros((), dtype=torch.long, device=device)

  def start(self, lengths: list[int]) -> None:
    """The next batch's lengths (rows beyond them, padding, repeat the last)."""
    values = torch.tensor(lengths + lengths[-1:] * (len(self.lengths) - len(lengths)))
    self.lengths.copy_(values[:len(self.lengths)])
    self.calls.zero_()

  def forward(self, hidden: torch.Tensor) -> torch.Tensor:
    """The head's logits (B, n, V), EOS forced or banned by row."""
    logits = self.head(hidden)
    ended = self.calls >= self.lengths[:logits.shape[0]]  # (B,)
    forced = torch.full(ended.shape, 1e4, dtype=logits.dtype, device=logits.device)
    logits[..., self.eos] = torch.where(ended, forced, float("-inf"))[:, None]
    self.calls.add_(1)
    return logits


class CaptionLengths:
  """Realistic caption lengths in tokens, drawn per frame: from a narration output's captions or
  a normal distribution, at most the cap (a caption that long reaches it without EOS)."""

  def __init__(self, args, tokenizer, seed: int = 0):
    self.cap, self.rng = args.new_tokens, np.random.default_rng(seed)
    self.pool = None
    if args.lengths_from:
      self.pool = np.array(caption_token_counts(args.lengths_from, tokenizer))
      self.source = f"{len(self.pool)} captions of {args.lengths_from}"
    else:
      self.source = f"normal(mean {args.length_mean}, sd {args.length_sd}), assumed"
    self.mean, self.sd, self.seed = args.length_mean, args.length_sd, seed
    self.drawn: list[int] = []

  def restart(self) -> None:
    """Draws the same lengths again (each path and batch size sees the same captions)."""
    self.rng = np.random.default_rng(self.seed)

  def draw(self, count: int) -> list[int]:
    """Lengths of `count` frames."""
    if self.pool is not None:
      values = self.rng.choice(self.pool, count)
    else:
      values = np.rint(self.rng.normal(self.mean, self.sd, count))
    values = [int(v) for v in np.clip(values, 1, self.cap)]
    self.drawn += values
    return values


def caption_token_counts(path: str, tokenizer) -> list[int]:
  """Token counts of every caption of a narration output (JSON lines)."""
  import json  # pylint: disable=import-outside-toplevel
  counts = []
  with open(path, encoding="utf-8") as f:
    for line in f:
      for item in json.loads(line)["narratives"]:
        counts.append(len(tokenizer(item["text"], add_special_tokens=False)["input_ids"]))
  return counts


def install_lengths(narrator, args, capacity: int):
  """The hook run before each batch of at most `capacity` frames: in eos mode it draws their
  caption lengths, which the model's head (wrapped here) ends with EOS; returns (hook, lengths or
  None). A fast decoder made afterwards must list the head's counter in its step_buffers."""
  if args.lengths == "forced":
    return (lambda rows: None), None
  eos = eos_ids(narrator.model.generation_config)
  if not eos:
    sys.exit("--lengths eos needs a model with an EOS id")
  head = EndAtLengths(narrator.model.lm_head, eos[0], capacity, narrator.device)
  narrator.model.lm_head = head
  lengths = CaptionLengths(args, narrator.processor.tokenizer)
  return (lambda rows: head.start(lengths.draw(rows))), lengths


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


def rows_of(inputs) -> int:
  """Frames in a prepared batch."""
  return len(inputs["input_ids"])


def time_fast(narrator, batches, before) -> dict:
  """Seconds for `batches` with the static-cache decoder, its prefill and decode-step times;
  `before(rows)` readies each batch (eos mode: its caption lengths)."""
  decoder = narrator.decoder
  decoder.release()  # a cache of its own per batch size (padding to a larger one would cost)
  decoder.measure = True
  start = time.perf_counter()
  before(rows_of(batches[0]))
  first = decoder.generate(batches[0])
  warm_up = time.perf_counter() - start
  reset_peak(narrator.device)
  prefill = decode = steps = 0.0
  start = time.perf_counter()
  for inputs in batches:
    before(rows_of(inputs))
    decoder.generate(inputs)
    prefill += decoder.timings["prefill_s"]
    decode += decoder.timings["decode_s"]
    steps += decoder.timings["decode_steps"]
  sync(narrator.device)
  seconds = time.perf_counter() - start
  return {"seconds": seconds, "prefill_s": prefill / len(batches),
          "step_ms": 1000 * decode / max(steps, 1), "steps": steps / len(batches),
          "warm_up_s": warm_up, "tokens": first}


def time_generate(narrator, batches, new_tokens: int, forced: bool, before) -> dict:
  """The same for model.generate: its prefill timed as a one-token generate."""
  model = narrator.model

  def run(inputs, tokens, new_lengths=True):
    """model.generate's new tokens, at most `tokens` of them (exactly, when forced)."""
    if new_lengths:
      before(rows_of(inputs))
    out = model.generate(**inputs, do_sample=False, num_beams=1, max_new_tokens=tokens,
                         min_new_tokens=tokens if forced else 0)
    sync(narrator.device)
    return out[:, inputs["input_ids"].shape[1]:]

  start = time.perf_counter()
  first = run(batches[0], new_tokens).cpu()
  warm_up = time.perf_counter() - start
  reset_peak(narrator.device)
  start = time.perf_counter()
  run(batches[0], 1, False)
  prefill = time.perf_counter() - start
  start, steps = time.perf_counter(), 0
  for inputs in batches:
    steps += run(inputs, new_tokens).shape[1]
  seconds = time.perf_counter() - start
  steps /= len(batches)
  step_ms = 1000 * (seconds / len(batches) - prefill) / max(steps - 1, 1)
  return {"seconds": seconds, "prefill_s": prefill, "step_ms": step_ms, "steps": steps - 1,
          "warm_up_s": warm_up, "tokens": first}


def measure(path: str, narrator, images, batch: int, args, before, lengths=None) -> dict:
  """One row of the table (or the reason it has no figures)."""
  if lengths is not None:
    lengths.restart()
  try:
    batches = batches_of(narrator, images, batch, args.frames or 32)
    with torch.inference_mode():
      row = (time_fast(narrator, batches, before) if path == "fast"
             else time_generate(narrator, batches, args.new_tokens, args.lengths == "forced",
                                before))
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
  print("| path | batch | frames/s | prefill s | decode ms/step | steps/batch | warm-up s | "
        "peak GiB | = generate | note |")
  print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
  for r in sorted(rows, key=lambda r: (r["batch"], r["path"])):
    if "fps" not in r:
      print(f"| {r['path']} | {r['batch']} | - | - | - | - | - | - | - | {r['note']} |")
      continue
    same = "-"
    reference = generate_tokens.get(r["batch"])
    if r["path"] == "fast" and reference is not None and reference.shape == r["tokens"].shape:
      tokens = r["tokens"]
      same = f"{100 * float((tokens == reference).all(-1).float().mean()):.0f}%"
    peak = f"{r['peak_gib']:.1f}" if "peak_gib" in r else "-"
    print(f"| {r['path']} | {r['batch']} | {r['fps']:.2f} | {r['prefill_s']:.3f} | "
          f"{r['step_ms']:.1f} | {r['steps']:.1f} | {r['warm_up_s']:.1f} | {peak} | {same} | |")


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
  before, lengths = install_lengths(fast, args, max(sizes))
  print(f"lengths: {args.lengths}" + (f", cap {args.new_tokens}, drawn from {lengths.source}"
                                       if lengths else f", {args.new_tokens} tokens each"))
  rng = np.random.default_rng(0)
  images = [Image.fromarray(rng.integers(0, 255, (336, 448, 3), dtype=np.uint8))
            for _ in range(32)]
  paths = args.paths.split(",")
  rows = []
  if "generate" in paths:  # first: the fast path compiles the model's layers in place
    rows += [measure("generate", slow, images, b, args, before, lengths) for b in sizes]
  if "fast" in paths:
    if fast.device.type == "cuda":
      torch.cuda.empty_cache()  # the generate rows' blocks
    fast.decoder = GreedyDecoder(fast.model, args.new_tokens,
                                 compile=False if args.no_compile else None)
    if lengths:
      fast.decoder.step_buffers = [fast.model.lm_head.calls]
    rows += [measure("fast", fast, images, b, args, before, lengths) for b in sizes]
  print_table(rows)
  if lengths:
    drawn = np.array(lengths.drawn)
    print(f"caption lengths drawn: mean {drawn.mean():.1f}, max {drawn.max()}, "
          f"{int((drawn >= args.new_tokens).sum())} of {len(drawn)} at the cap")
  if args.end_to_end:
    model_only = {r["batch"]: r.get("fps") for r in rows if r["path"] == "fast"}
    end_to_end(fast, args, auto, model_only.get(auto), before)


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


def end_to_end(narrator, args, batch: int, model_only_fps, before) -> None:
  """The narrate command's pipeline on generated videos at `batch` frames per batch."""
  from data_prep.narration import pipeline  # pylint: disable=import-outside-toplevel
  if narrator.decoder is None:
    narrator.decoder = GreedyDecoder(narrator.model, args.new_tokens,
                                     compile=False if args.no_compile else None)
    if args.lengths == "eos":
      narrator.decoder.step_buffers = [narrator.model.lm_head.calls]
  generate_batch = narrator._generate  # pylint: disable=protected-access

  def with_lengths(inputs):
    """A batch of the pipeline, its caption lengths drawn first (eos mode)."""
    before(rows_of(inputs))
    return generate_batch(inputs)

  narrator._generate = with_lengths  # pylint: disable=protected-access
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
    print("| batch | decode workers | frames/s | vs model only | captions at the cap |")
    print("| --- | --- | --- | --- | --- |")
    for workers in [int(w) for w in args.decode_workers.split(",")]:
      out = os.path.join(folder, f"narratives-{workers}.jsonl")
      summary = pipeline.narrate(narrator, videos, out, batch_size=batch, progress=False,
                                 decode_workers=workers)
      fps = summary["frames_per_second"]
      ratio = f"{100 * fps / model_only_fps:.0f}%" if model_only_fps else "-"
      print(f"| {batch} | {workers} | {fps:.2f} | {ratio} | {summary['captions_at_cap']} of "
            f"{summary['frames']} |")


if __name__ == "__main__":
  main()
