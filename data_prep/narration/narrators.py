"""MLLM narrators behind one interface: LLaVA-1.5 (the paper's), BLIP-2 (its Table 5), and any
current transformers image-text model with a chat template (the hf backend).

A narrator loads a Hugging Face model from a LOCAL directory (nothing is downloaded) and captions a
batch of PIL images with greedy decoding: by default with the static-cache decoder of
data_prep/narration/generation.py (CUDA graphs and regional compilation on a GPU), whose tokens are
those of `model.generate`, for the families its adapters support; `fast=False`, another family or
a generation option that decoder does not apply uses `model.generate` itself. What the captions
depend on (prompt string, preprocessing, template, cap, backend) is `narrator.settings`
(data_prep/narration/settings.py).
"""

import logging
import re

import torch
from PIL import Image
from transformers import (AutoModelForImageTextToText, BatchFeature, Blip2ForConditionalGeneration,
                          LlavaForConditionalGeneration)

from data_prep.narration import generation
from data_prep.narration.preprocess import mean_colour, pad_to_square
from data_prep.narration.settings import (DEFAULT_MAX_NEW_TOKENS, check_choices, load_processor,
                                          narration_settings)
from data_prep.narration.settings import PAPER_PROMPT  # noqa: F401  (its older home)
from tea_jax.errors import InputError

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
  """Captions images; subclasses set `model_class` and `name` (the backend)."""

  model_class = None
  name = "narrator"

  def __init__(self, model_dir: str | None, device: str = "auto", dtype: str = "auto",
               max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, prompt: str | None = None,
               components=None, fast: bool = True, compile: bool | None = None,
               preprocess: str | None = None, template: str | None = None):
    """Loads `model_dir` (a local Hugging Face directory), or takes `components` = (model,
    processor) already built (benchmarks of randomly initialised architectures). `prompt` replaces
    the paper's question; `preprocess` and `template` default to the backend's (settings.py).
    `fast` decodes with the static-cache decoder; `compile` (default: on CUDA) compiles its
    repeated regions."""
    preprocess, template = check_choices(self.name, preprocess, template)  # before any loading
    self.device, self.dtype = resolve_device_dtype(device, dtype)
    self.max_new_tokens = max_new_tokens
    self.max_batch = None  # set when the device ran out of memory at a larger batch
    self.prompt = prompt
    self.captions = self.captions_at_cap = 0  # over the narrator's life; a run takes differences
    if components is not None:
      self.model, self.processor = components
      self.model.to(self.dtype)
    else:
      self.model, self.processor = self._load(model_dir, preprocess)
    self.settings = narration_settings(self.name, model_dir, preprocess=preprocess,
                                       template=template, max_new_tokens=max_new_tokens,
                                       question=prompt, processor=self.processor)
    image_processor = getattr(self.processor, "image_processor", self.processor)
    self.pad_colour = mean_colour(image_processor) if preprocess == "pad" else None
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

  def processor_options(self, preprocess: str) -> dict:
    """Keyword arguments for loading the processor."""
    del preprocess
    return {}

  def _load(self, model_dir: str | None, preprocess: str):
    """(model, processor) of a local model directory."""
    processor = load_processor(model_dir, **self.processor_options(preprocess))
    try:
      model = self.model_class.from_pretrained(model_dir, dtype=self.dtype, local_files_only=True)
    except (OSError, ValueError) as e:
      raise InputError(f"cannot load a {self.name} model from {model_dir!r} (a local Hugging "
                       f"Face model directory is required; nothing is downloaded): {e}") from e
    return model, processor

  def prompt_text(self) -> str | None:
    """The exact text prompt of every frame (None: the model's own start)."""
    return self.settings.prompt

  def prepare(self, images):
    """CPU half of `caption`: the processor's pixel values and prompt ids (run in a worker thread by
    data_prep.narrate, so that it overlaps with the previous batch's generation)."""
    images = list(images)
    if self.pad_colour is not None:
      images = [pad_to_square(image, self.pad_colour) for image in images]
    text = self.prompt_text()
    kwargs = {"images": images, "return_tensors": "pt"}
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
      ids = inputs.get("input_ids")
      prompt = (ids if ids is not None else generation.adapter_for(self.model).prompt_ids(inputs)
                ).shape[1]
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
    n = len(inputs["input_ids"] if "input_ids" in inputs else inputs["pixel_values"])
    size = min(n, self.max_batch or n)
    texts: list[str] = []
    while len(texts) < n:
      start = len(texts)
      part = inputs if size == n else rows(inputs, start, start + size, n)
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
    """Captions of one batch that fits the device; counts those that reached the token cap."""
    inputs = self.to_device(inputs)
    if self.decoder is not None:
      new_tokens, eos = self.decoder.generate(inputs), self.decoder.eos
    else:
      new_tokens = self.model.generate(**inputs, do_sample=False, num_beams=1,
                                       max_new_tokens=self.max_new_tokens)
      eos = generation.eos_ids(generation.generation_config_of(self.model))
      prompt_ids = inputs.get("input_ids")
      if prompt_ids is not None and new_tokens.shape[1] >= prompt_ids.shape[1] and torch.equal(
          new_tokens[:, :prompt_ids.shape[1]], prompt_ids):
        new_tokens = new_tokens[:, prompt_ids.shape[1]:]  # decoder-only models echo the prompt
    self.captions += len(new_tokens)
    self.captions_at_cap += int(generation.reached_cap(new_tokens, eos).sum())
    texts = self.processor.batch_decode(new_tokens, skip_special_tokens=True)
    return [normalise_whitespace(t) for t in texts]

  def caption(self, images) -> list[str]:
    """Greedy captions of `images`, the prompt sliced off, whitespace normalised."""
    return self.generate(self.prepare(images))


class LlavaNarrator(Narrator):
  """LLaVA-1.5 as LLaVA itself runs it (by default): the frame padded to a square with the image
  mean, the llava_v1 conversation with its system sentence (settings.py)."""

  model_class = LlavaForConditionalGeneration
  name = "llava"

  def processor_options(self, preprocess: str) -> dict:
    """LLaVA-1.5 resized its padded frames with PIL's bicubic filter: the PIL image backend, also
    where torchvision would be the processor's default."""
    return {"backend": "pil"} if preprocess == "pad" else {}


class Blip2Narrator(Narrator):
  """BLIP-2 captioning: no prompt (the paper's Table 5 setting); the processor's own resize."""

  model_class = Blip2ForConditionalGeneration
  name = "blip2"


class HfNarrator(Narrator):
  """Any local transformers image-text-to-text model with a chat template: the paper's question
  after one image, rendered by the model's own chat template."""

  model_class = AutoModelForImageTextToText
  name = "hf"


def rows(inputs, start: int, stop: int, batch: int) -> BatchFeature:
  """Rows [start, stop) of prepared inputs for `batch` frames. Tensors whose first axis is the
  batch are sliced; flattened image patches with `image_grid_thw` (Qwen2-VL's layout, one image
  per frame) are sliced by each image's patch count."""
  part = {}
  for key, value in inputs.items():
    if value.shape[0] == batch:
      part[key] = value[start:stop]
    elif key == "pixel_values" and "image_grid_thw" in inputs:
      counts = inputs["image_grid_thw"].prod(-1).tolist()
      part[key] = value[sum(counts[:start]):sum(counts[:stop])]
    else:
      raise ValueError(f"cannot split the prepared input {key!r} {tuple(value.shape)} into frames")
  return BatchFeature(part)


BACKENDS = {"llava": LlavaNarrator, "blip2": Blip2Narrator, "hf": HfNarrator}
