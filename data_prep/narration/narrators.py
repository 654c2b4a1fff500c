"""MLLM narrators behind one interface: LLaVA-1.5 (the paper's) and BLIP-2 (its Table 5).

A narrator loads a Hugging Face model from a LOCAL directory (nothing is downloaded) and captions a
batch of PIL images with greedy decoding: by default with the static-cache decoder of
data_prep/narration/generation.py (CUDA graphs and regional compilation on a GPU), whose tokens are
those of `model.generate`; `fast=False` (or a generation option that decoder does not apply) uses
`model.generate` itself. A newer transformers MLLM is one small subclass: say how to build the
prompt and which classes load it.
"""

import logging
import re

import torch
from PIL import Image
from transformers import (AutoProcessor, BatchFeature, Blip2ForConditionalGeneration,
                          LlavaForConditionalGeneration)

from data_prep.narration import generation
from tea_jax.errors import InputError

# The TEA paper's prompt, verbatim (section 3.2).
PAPER_PROMPT = ("This is one image frame sampled from a video. Please caption this frame in two or "
                "three sentences, to describe this frame with some details but without any "
                "analysis.")


log = logging.getLogger(__name__)


def normalise_whitespace(text: str) -> str:
  """`text` with runs of whitespace made single spaces, ends stripped."""
  return re.sub(r"\s+", " ", text).strip()


def resolve_device_dtype(device: str, dtype: str) -> tuple[torch.device, torch.dtype]:
  """auto: CUDA with bfloat16 when available, else CPU with float32."""
  if device == "auto":
    device = "cuda" if torch.cuda.is_available() else "cpu"
  if device.startswith("cuda") and not torch.cuda.is_available():
    raise InputError(f"--device {device} was asked for but no CUDA device is available")
  if dtype == "auto":
    dtype = "bfloat16" if device.startswith("cuda") else "float32"
  dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
  if dtype not in dtypes:
    raise InputError(f"unknown dtype {dtype!r}: expected one of {sorted(dtypes)} or auto")
  return torch.device(device), dtypes[dtype]


class Narrator:
  """Captions images; subclasses set `model_class` and `prompt_text`."""

  model_class = None
  name = "narrator"

  def __init__(self, model_dir: str | None, device: str = "auto", dtype: str = "auto",
               max_new_tokens: int = 80, prompt: str | None = None, components=None,
               fast: bool = True, compile: bool | None = None):
    """Loads `model_dir` (a local Hugging Face directory), or takes `components` = (model,
    processor) already built (benchmarks of randomly initialised architectures). `fast` decodes
    with the static-cache decoder; `compile` (default: on CUDA) compiles its repeated regions."""
    self.device, self.dtype = resolve_device_dtype(device, dtype)
    self.max_new_tokens = max_new_tokens
    self.max_batch = None  # set when the device ran out of memory at a larger batch
    self.prompt = prompt
    if components is not None:
      self.model, self.processor = components
      self.model.to(self.dtype)
    else:
      try:
        self.processor = AutoProcessor.from_pretrained(model_dir, local_files_only=True)
        self.model = self.model_class.from_pretrained(model_dir, dtype=self.dtype,
                                                      local_files_only=True)
      except (OSError, ValueError) as e:
        raise InputError(f"cannot load a {self.name} model from {model_dir!r} (a local Hugging "
                       f"Face model directory is required; nothing is downloaded): {e}") from e
    self.model.to(self.device).eval()
    tokenizer = getattr(self.processor, "tokenizer", None)
    if tokenizer is not None:
      tokenizer.padding_side = "left"  # batched generation continues every row at its end
    self.decoder = None
    if fast:
      try:
        self.decoder = generation.GreedyDecoder(self.model, max_new_tokens, compile=compile)
      except ValueError as e:
        log.warning("%s: decoding with model.generate: %s", self.name, e)

  def prompt_text(self) -> str | None:
    """The text prompt of every frame (None: the model's own start)."""
    return None

  def prepare(self, images):
    """CPU half of `caption`: the processor's pixel values and prompt ids (run in a worker thread by
    data_prep.narrate, so that it overlaps with the previous batch's generation)."""
    text = self.prompt_text()
    kwargs = {"images": list(images), "return_tensors": "pt"}
    if text is not None:
      kwargs.update(text=[text] * len(images), padding=True)
    return self.processor(**kwargs)

  def auto_batch_size(self, limit: int = 256) -> int:
    """The batch size that fits the device's free memory (KV cache and prefill activations per
    frame, see generation.frame_bytes); 8 on a CPU."""
    if self.device.type != "cuda":
      return 8
    inputs = self.prepare([Image.new("RGB", (64, 64))])
    try:
      prompt = generation.adapter_for(self.model).prompt_ids(inputs).shape[1]
      per_frame = generation.frame_bytes(self.model, prompt, self.max_new_tokens)
    except (ValueError, AttributeError) as e:  # e.g. an encoder-decoder language model
      log.warning("%s: no memory model for this architecture (%s); batches of 16", self.name, e)
      return 16
    free, _ = torch.cuda.mem_get_info(self.device)
    free += torch.cuda.memory_reserved(self.device) - torch.cuda.memory_allocated(self.device)
    return generation.batch_size_for(free, per_frame, limit)

  def generate(self, inputs) -> list[str]:
    """Device half of `caption`: greedy decoding, the prompt sliced off, whitespace normalised.

    When the device runs out of memory, the batch is halved (down to one frame) and the smaller size
    is kept for the rest of the run, with a warning: a too-large --batch-size slows a run down
    instead of ending it.
    """
    n = len(next(iter(inputs.values())))
    size = min(n, self.max_batch or n)
    texts: list[str] = []
    while len(texts) < n:
      start = len(texts)
      part = inputs if size == n else BatchFeature(
          {k: v[start:start + size] for k, v in inputs.items()})
      try:
        texts += self._generate(part)
      except torch.OutOfMemoryError:
        if size == 1:
          raise
        size //= 2
        self.max_batch = size
        log.warning("%s ran out of device memory; continuing with batches of %d frames",
                    self.name, size)
        if self.decoder is not None:
          self.decoder.release()  # its cache was sized for the larger batch
        if self.device.type == "cuda":
          torch.cuda.empty_cache()
    return texts

  def to_device(self, inputs):
    """Prepared inputs on the model's device, pixel values in its dtype."""
    inputs = inputs.to(self.device)
    if "pixel_values" in inputs:
      inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
    return inputs

  @torch.inference_mode()
  def _generate(self, inputs) -> list[str]:
    """Captions of one batch that fits the device."""
    inputs = self.to_device(inputs)
    if self.decoder is not None:
      new_tokens = self.decoder.generate(inputs)
    else:
      new_tokens = self.model.generate(**inputs, do_sample=False, num_beams=1,
                                       max_new_tokens=self.max_new_tokens)
      prompt_ids = inputs.get("input_ids")
      if prompt_ids is not None and new_tokens.shape[1] >= prompt_ids.shape[1] and torch.equal(
          new_tokens[:, :prompt_ids.shape[1]], prompt_ids):
        new_tokens = new_tokens[:, prompt_ids.shape[1]:]  # decoder-only models echo the prompt
    texts = self.processor.batch_decode(new_tokens, skip_special_tokens=True)
    return [normalise_whitespace(t) for t in texts]

  def caption(self, images) -> list[str]:
    """Greedy captions of `images`, the prompt sliced off, whitespace normalised."""
    return self.generate(self.prepare(images))


class LlavaNarrator(Narrator):
  """LLaVA-1.5 with the paper's prompt in its chat format `USER: <image>\\n{prompt} ASSISTANT:`."""

  model_class = LlavaForConditionalGeneration
  name = "llava"

  def prompt_text(self) -> str:
    """The paper's prompt in LLaVA-1.5's chat format."""
    return f"USER: <image>\n{self.prompt or PAPER_PROMPT} ASSISTANT:"


class Blip2Narrator(Narrator):
  """BLIP-2 captioning: no prompt (the paper's Table 5 setting)."""

  model_class = Blip2ForConditionalGeneration
  name = "blip2"

  def prompt_text(self) -> None:
    """No prompt: captions continue the image's query tokens and BOS."""
    return None


BACKENDS = {"llava": LlavaNarrator, "blip2": Blip2Narrator}
