"""`python -m data_prep.narrate`: narrate videos with an MLLM, on one device or all of a machine's.

    python -m data_prep.narrate --videos DIR --model MODEL_DIR --out narratives.jsonl \\
        [--backend llava|blip2|hf] [--preprocess pad|crop] [--template llava_v1|vicuna_v1|hf] \\
        [--interval 1.0] [--batch-size auto|N] [--max-new-tokens 192] \\
        [--devices all|0,1,...] [--num-shards K --shard-index I] [--video-ids FILE] \\
        [--decode-workers 2] [--device auto] [--dtype auto] [--generation fast|generate] \\
        [--no-compile] [--allow-failures]
    python -m data_prep.narrate merge --out narratives.jsonl SHARD.jsonl ... \\
        [--videos DIR | --video-ids FILE] [--allow-failures]

The llava backend narrates as LLaVA-1.5 itself does by default: the frame padded to a square with
the image mean (--preprocess pad; crop: the Hugging Face processor's centre crop) and the llava_v1
conversation with its system sentence (--template llava_v1; hf: the processor's chat template).
--backend hf takes any local image-text-to-text model with a chat template. Captions end at EOS;
the run reports how many reached --max-new-tokens.

One JSON line per finished video: {"video_id", "interval", "narratives": [{"t", "text"}], "model",
"prompt", "settings"}; an output holds one setting (a resume or merge with others is refused);
videos that failed go to `<out>.failures.jsonl` (one line each, with the reason), and a
restart resumes. --batch-size auto (the default) picks the largest batch the device's free memory
holds. --devices all runs one worker per GPU, each on its share of the videos, and merges their
parts into --out at the end. With --num-shards K (several machines) the videos, sorted by id, are
split round-robin and shard I writes `<out stem>.<I>-of-<K>.jsonl`; `merge` joins the shards and
checks that every video is narrated once: videos whose failure a shard recorded are reported
apart from missing ones, and fail the merge unless --allow-failures.
"""

import argparse
import json
import logging
import os
import sys

from data_prep.frames import find_videos
from data_prep.narration.outputs import merge
from data_prep.narration.pipeline import (check_settings, narrate, read_video_ids, resume_point,
                                          select_videos, shard_path)
from data_prep.narration.settings import (BACKEND_DEFAULTS, DEFAULT_MAX_NEW_TOKENS, PREPROCESS,
                                          TEMPLATES, check_choices, narrator_settings)
from tea_jax.errors import InputError


def _narrate_parser() -> argparse.ArgumentParser:
  """The narrate command's flags."""
  parser = argparse.ArgumentParser(prog="python -m data_prep.narrate",
                                   description=__doc__.split("\n")[0])
  parser.add_argument("--videos", required=True, help="folder of <video_id>.mp4/.mkv/.webm")
  parser.add_argument("--model", required=True, help="local Hugging Face model directory")
  parser.add_argument("--out", required=True, help="output JSON lines file")
  parser.add_argument("--backend", choices=sorted(BACKEND_DEFAULTS), default="llava",
                      help="llava: LLaVA-1.5; blip2: BLIP-2 (no prompt); hf: any local "
                           "image-text-to-text model with a chat template")
  parser.add_argument("--preprocess", choices=PREPROCESS,
                      help="pad: pad the frame to a square with the image mean first (LLaVA-1.5's "
                           "own; the llava default); crop: the processor's own (Hugging Face's "
                           "llava-1.5: short side resized, centre cropped)")
  parser.add_argument("--template", choices=TEMPLATES,
                      help="llava_v1: LLaVA-1.5's conversation with its system sentence (the "
                           "llava default, as LLaVA's run_llava and CLI pick it); vicuna_v1: the "
                           "one LLaVA-1.5 was fine-tuned and evaluated with ('user' for "
                           "'human'); hf: the processor's chat template (the hf default)")
  parser.add_argument("--interval", type=float, default=1.0, help="seconds between frames")
  parser.add_argument("--batch-size", default="auto",
                      help="frames per generation call; auto: as many as free memory holds")
  parser.add_argument("--max-new-tokens", type=int, default=DEFAULT_MAX_NEW_TOKENS,
                      help="cap on a caption's tokens; captions end at EOS well before it")
  parser.add_argument("--devices", help="all, or device numbers/names (0,1 or cpu,cpu): one "
                                        "worker process per device")
  parser.add_argument("--num-shards", type=int, default=1)
  parser.add_argument("--shard-index", type=int, default=0)
  parser.add_argument("--video-ids", help="optional file: the video ids to narrate, one a line")
  parser.add_argument("--decode-workers", type=int, default=2,
                      help="threads decoding videos in parallel (more for HD videos)")
  parser.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda, cuda:1")
  parser.add_argument("--dtype", default="auto", help="auto (bf16 on CUDA, float32 on CPU), "
                                                      "float32, bfloat16, float16")
  parser.add_argument("--generation", choices=("fast", "generate"), default="fast",
                      help="fast: static cache + CUDA graph decoder; generate: model.generate")
  parser.add_argument("--no-compile", action="store_true",
                      help="do not torch.compile the decoder layers (CUDA)")
  parser.add_argument("--allow-failures", action="store_true",
                      help="with --devices: merge even if some videos failed (they are listed "
                           "in the failures file)")
  return parser


def _batch_size(value: str) -> int | None:
  """--batch-size as a number, or None for auto."""
  if value == "auto":
    return None
  try:
    size = int(value)
  except ValueError:
    raise InputError(f"--batch-size must be a number or auto, got {value!r}") from None
  if size < 1:
    raise InputError(f"--batch-size must be at least 1, got {size}")
  return size


def _narrate_main(argv) -> int:
  """The narrate command: checks the flags, then narrates on one device or all."""
  args = _narrate_parser().parse_args(argv)
  batch_size = _batch_size(args.batch_size)
  check_settings(args.interval, batch_size, args.decode_workers)
  if args.max_new_tokens < 1:
    raise InputError(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}")
  check_choices(args.backend, args.preprocess, args.template)
  videos = select_videos(args.videos, args.video_ids, args.num_shards, args.shard_index)
  out = shard_path(args.out, args.num_shards, args.shard_index)
  if os.path.isdir(out):
    raise InputError(f"cannot write the output {out}: it is a folder")
  narrator_kwargs = {"backend": args.backend, "model_dir": args.model, "dtype": args.dtype,
                     "max_new_tokens": args.max_new_tokens, "preprocess": args.preprocess,
                     "template": args.template, "fast": args.generation == "fast",
                     "compile": False if args.no_compile else None}
  if args.devices and args.device != "auto":
    raise InputError("give either --device (one device) or --devices (one worker per device)")
  if args.devices:
    from data_prep.narration import devices  # pylint: disable=import-outside-toplevel
    summary = devices.narrate_on_devices(
        narrator_kwargs, videos, out, devices.parse_devices(args.devices), args.interval,
        batch_size, args.decode_workers, args.allow_failures)
  else:
    # An output of other settings is refused before the model loads (narrate checks it again).
    resume_point(narrator_settings(narrator_kwargs), out, args.interval)
    from data_prep.narration.narrators import BACKENDS  # pylint: disable=import-outside-toplevel
    backend = narrator_kwargs.pop("backend")
    narrator = BACKENDS[backend](device=args.device, **narrator_kwargs)
    summary = narrate(narrator, videos, out, args.interval, batch_size,
                      decode_workers=args.decode_workers)
  print(json.dumps(summary, indent=1))
  return 0


def _merge_main(argv) -> int:
  """The merge command."""
  parser = argparse.ArgumentParser(prog="python -m data_prep.narrate merge",
                                   description="Join shard outputs; check completeness.")
  parser.add_argument("shards", nargs="+")
  parser.add_argument("--out", required=True)
  parser.add_argument("--videos", help="folder whose videos must all be narrated")
  parser.add_argument("--video-ids", help="file of the video ids that must all be narrated")
  parser.add_argument("--allow-failures", action="store_true",
                      help="merge even if some videos failed (their failures are recorded in "
                           "the shards' failures files and carried to the output's)")
  args = parser.parse_args(argv)
  expected = None
  if args.video_ids:
    expected = set(read_video_ids(args.video_ids))
  elif args.videos:
    try:
      expected = set(find_videos(args.videos))
    except FileNotFoundError as e:
      raise InputError(str(e)) from None
  print(json.dumps(merge(args.shards, args.out, expected, args.allow_failures), indent=1))
  return 0


def main(argv=None) -> int:
  """Runs the narrate command (or `merge`); bad input is one line on stderr and exit code 2 (1 for
  merge); any other error keeps its traceback."""
  argv = sys.argv[1:] if argv is None else argv
  if not logging.getLogger().handlers:  # our warnings and the chosen batch size, on stderr
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s",
                        datefmt="%H:%M:%S")
  is_merge = bool(argv) and argv[0] == "merge"
  try:
    return _merge_main(argv[1:]) if is_merge else _narrate_main(argv)
  except InputError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1 if is_merge else 2
