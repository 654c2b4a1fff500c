"""What the captions depend on, in one place: the backend, the exact prompt string, the image
preprocessing and the cap on new tokens. Narrators are built with these settings, the narrate
command records them in every output line, `merge` refuses to join shards made with different
ones, and the predict app puts `key_parts()` into its cache key (`narration_settings` computes them
without loading the model's weights)."""

import dataclasses

from tea_jax.errors import InputError

# The TEA paper's prompt, verbatim (section 3.2).
PAPER_PROMPT = ("This is one image frame sampled from a video. Please caption this frame in two or "
                "three sentences, to describe this frame with some details but without any "
                "analysis.")

# LLaVA-1.5's conversations (haotian-liu/LLaVA, llava/conversation.py): a system sentence, then one
# USER turn that starts with the image, then the ASSISTANT role to be continued. `llava_v1` is the
# one its own inference commands (run_llava, the CLI) pick for a v1.5 model; `vicuna_v1` (the same
# but "user" for "human") is the one it was fine-tuned with (--version v1) and its evaluation
# scripts pass.
LLAVA_V1_SYSTEM = ("A chat between a curious human and an artificial intelligence assistant. "
                   "The assistant gives helpful, detailed, and polite answers to the human's "
                   "questions.")
VICUNA_V1_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. "
                    "The assistant gives helpful, detailed, and polite answers to the user's "
                    "questions.")
CONVERSATIONS = {"llava_v1": LLAVA_V1_SYSTEM, "vicuna_v1": VICUNA_V1_SYSTEM}

# "Two or three sentences ... with some details" runs to about 60-100 tokens; the cap is there to
# stop a model that does not end, not to shorten captions (LLaVA's own scripts allow 128-1024).
DEFAULT_MAX_NEW_TOKENS = 192

# Lines written before the settings were recorded: the 80-token cap and the processor's crop.
LEGACY_MAX_NEW_TOKENS = 80

PREPROCESS = ("pad", "crop")
TEMPLATES = ("llava_v1", "vicuna_v1", "hf")

# backend -> (default preprocess, default template; None: no prompt at all).
BACKEND_DEFAULTS = {"llava": ("pad", "llava_v1"), "blip2": ("crop", None), "hf": ("crop", "hf")}


@dataclasses.dataclass(frozen=True)
class NarrationSettings:
  """The settings that change the captions; `prompt` is the exact text sent with each frame."""

  backend: str
  prompt: str | None  # None: BLIP-2 captions the image without a prompt
  preprocess: str  # pad: LLaVA-1.5's square padding first; crop: the processor's own
  template: str | None  # how `prompt` was built (TEMPLATES, or None without a prompt)
  max_new_tokens: int

  def key_parts(self) -> dict:
    """The settings as a dict of plain values (the predict app's cache key takes them)."""
    return dataclasses.asdict(self)

  def recorded(self) -> dict:
    """What every output line records under "settings" (the prompt is recorded beside it)."""
    return {"backend": self.backend, "preprocess": self.preprocess, "template": self.template,
            "max_new_tokens": self.max_new_tokens}


def check_choices(backend: str, preprocess: str | None, template: str | None) -> tuple:
  """(preprocess, template) with the backend's defaults filled in; a combination that cannot work
  is an InputError (checked before a model is loaded)."""
  if backend not in BACKEND_DEFAULTS:
    raise InputError(f"unknown narrator backend {backend!r}: expected one of "
                     f"{sorted(BACKEND_DEFAULTS)}")
  default_preprocess, default_template = BACKEND_DEFAULTS[backend]
  preprocess = preprocess or default_preprocess
  if preprocess not in PREPROCESS:
    raise InputError(f"unknown --preprocess {preprocess!r}: expected one of {list(PREPROCESS)}")
  if template is None:
    return preprocess, default_template
  if template not in TEMPLATES:
    raise InputError(f"unknown --template {template!r}: expected one of {list(TEMPLATES)}")
  if default_template is None:
    raise InputError(f"the {backend} backend captions without a prompt: --template does not apply")
  if backend == "hf" and template != "hf":
    raise InputError(f"--template {template} is LLaVA-1.5's conversation; the hf backend builds "
                     f"its prompt with the model's own chat template (--template hf)")
  return preprocess, template


def conversation_prompt(template: str, question: str) -> str:
  """`question` in one of LLaVA-1.5's conversations, image first, ready for the answer."""
  return f"{CONVERSATIONS[template]} USER: <image>\n{question} ASSISTANT:"


def chat_template_prompt(processor, question: str, where: str = "the model") -> str:
  """`question` after one image, as the processor's chat template renders a user turn."""
  if not getattr(processor, "chat_template", None):
    raise InputError(f"the processor of {where} has no chat template: the hf template needs one "
                     f"(the llava backend also takes --template llava_v1 or vicuna_v1)")
  messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
  return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def load_processor(model_dir: str, **kwargs):
  """The processor of a local model directory (nothing is downloaded)."""
  from transformers import AutoProcessor  # pylint: disable=import-outside-toplevel
  try:
    return AutoProcessor.from_pretrained(model_dir, local_files_only=True, **kwargs)
  except (OSError, ValueError) as e:
    raise InputError(f"cannot load a processor from {model_dir!r} (a local Hugging Face model "
                     f"directory is required; nothing is downloaded): {e}") from e


def narration_settings(backend: str, model_dir: str | None = None, *, preprocess: str | None = None,
                       template: str | None = None, max_new_tokens: int | None = None,
                       question: str | None = None, processor=None) -> NarrationSettings:
  """The settings a narrator of `backend` uses with these options (None: the backend's default).

  Only the hf template reads the model directory (its processor's chat template, not the weights);
  pass `processor` when it is already loaded."""
  preprocess, template = check_choices(backend, preprocess, template)
  max_new_tokens = DEFAULT_MAX_NEW_TOKENS if max_new_tokens is None else max_new_tokens
  if max_new_tokens < 1:
    raise InputError(f"--max-new-tokens must be at least 1, got {max_new_tokens}")
  question = question or PAPER_PROMPT
  if template is None:
    prompt = None
  elif template in CONVERSATIONS:
    prompt = conversation_prompt(template, question)
  else:
    if processor is None:
      if model_dir is None:
        raise InputError("the hf template needs the model directory (its chat template)")
      processor = load_processor(model_dir)
    prompt = chat_template_prompt(processor, question, model_dir or "the model")
  return NarrationSettings(backend, prompt, preprocess, template, max_new_tokens)


def narrator_settings(narrator_kwargs: dict) -> NarrationSettings:
  """The settings of the narrator that BACKENDS[backend](**narrator_kwargs) builds (backend,
  model_dir, max_new_tokens, preprocess, template, prompt), computed without loading it."""
  return narration_settings(narrator_kwargs["backend"], narrator_kwargs.get("model_dir"),
                            preprocess=narrator_kwargs.get("preprocess"),
                            template=narrator_kwargs.get("template"),
                            max_new_tokens=narrator_kwargs.get("max_new_tokens"),
                            question=narrator_kwargs.get("prompt"))


def line_settings(record: dict) -> dict:
  """The settings an output line was narrated with, as merge and resume compare them: backend,
  prompt, preprocess, max_new_tokens, interval. The template is left out (the prompt string it
  built is compared). Lines written before settings were recorded had the processor's crop and
  the 80-token cap."""
  recorded = record.get("settings")
  if not isinstance(recorded, dict):
    recorded = {"backend": record.get("model"), "preprocess": "crop",
                "max_new_tokens": LEGACY_MAX_NEW_TOKENS}
  return {"backend": recorded.get("backend"), "prompt": record.get("prompt"),
          "preprocess": recorded.get("preprocess"),
          "max_new_tokens": recorded.get("max_new_tokens"), "interval": record.get("interval")}


def describe_difference(first: dict, second: dict) -> tuple[str, str]:
  """The fields in which two line_settings differ, written out for each side."""
  names = [name for name in first if first[name] != second.get(name)]

  def side(settings: dict) -> str:
    """One side's differing fields as name=value."""
    return ", ".join(f"{name}={_short(settings.get(name))}" for name in names)

  return side(first), side(second)


def _short(value) -> str:
  """A setting's value for a one-line message (long prompts shortened)."""
  text = repr(value)
  return text if len(text) <= 60 else text[:28] + "..." + text[-28:]
