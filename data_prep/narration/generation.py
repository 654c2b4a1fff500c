"""Greedy captioning at the speed of the card: a static KV cache, the decode step replayed from a
CUDA graph, optional regional torch.compile, and per-frame EOS stopping.

`model.generate` re-concatenates its dynamic cache at every step, pays Python launch overhead for
each of the ~1000 kernels of a step and synchronises with the host once per token. Here the keys and
values live in buffers allocated once, every per-step input is a tensor updated in place, and one
decode step (forward, greedy choice, EOS bookkeeping) is a function of those buffers alone, so on
CUDA it is captured once in a graph and replayed. On a CPU the same functions run eagerly: the tests
compare their tokens with `model.generate` on tiny random models.

The tokens are those of `model.generate(do_sample=False, num_beams=1)`: the prompt is prefilled
through the model's own mask code exactly as generate does; decode steps attend over the whole
static buffer with a mask that hides the unwritten positions (they add exact zeros to the softmax),
so float32 results agree to rounding. Generation options with a logits processor other than
min_new_tokens are refused (`unsupported_options`): the narrator then falls back to generate.
"""

import contextlib
import inspect
import logging
import time

import torch

log = logging.getLogger(__name__)

# Generation-config fields whose non-neutral values add logits processors this loop does not apply.
_NEUTRAL = {"repetition_penalty": (None, 1.0), "encoder_repetition_penalty": (None, 1.0),
            "no_repeat_ngram_size": (None, 0), "encoder_no_repeat_ngram_size": (None, 0),
            "bad_words_ids": (None,), "min_length": (None, 0), "forced_bos_token_id": (None,),
            "forced_eos_token_id": (None,), "remove_invalid_values": (None, False),
            "exponential_decay_length_penalty": (None,), "suppress_tokens": (None,),
            "begin_suppress_tokens": (None,), "sequence_bias": (None,),
            "guidance_scale": (None, 1.0), "watermarking_config": (None,), "stop_strings": (None,),
            "max_time": (None,)}


def unsupported_options(generation_config) -> list[str]:
  """The generation-config fields set to values that this greedy loop would ignore."""
  return [f"{name}={getattr(generation_config, name)!r}" for name, neutral in _NEUTRAL.items()
          if getattr(generation_config, name, None) not in neutral]


def generation_config_of(model):
  """The generation config that model.generate uses (BLIP-2's is its language model's)."""
  if hasattr(model, "qformer") and hasattr(model, "language_model"):
    return model.language_model.generation_config
  return model.generation_config


def reached_cap(new_tokens: torch.Tensor, eos: list[int]) -> torch.Tensor:
  """(B,) True for the rows of greedy new tokens that hold no EOS: generation stops a row only at
  its EOS or at the token cap, so these were cut short by the cap."""
  if not eos:
    return torch.ones(new_tokens.shape[0], dtype=torch.bool)
  return ~torch.isin(new_tokens.cpu(), torch.tensor(eos)).any(-1)


def eos_ids(generation_config) -> list[int]:
  """The generation config's end-of-sequence ids as a list (empty: no early stop)."""
  eos = generation_config.eos_token_id
  if eos is None:
    return []
  return [int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])]


class StaticKVCache:
  """Every decoder layer's keys and values in buffers of a fixed length, written in place.

  Duck-types the transformers cache interface the attention layers call (`update`) and the few
  queries the prompt's mask code makes. The prompt (prefill) writes positions [0, L) and attends
  to its own keys alone, as generate's dynamic cache does; each decode step writes one position,
  `position` (a device scalar, so a CUDA graph replays it), and attends over the whole buffer
  under a mask that hides what is not written yet.
  """

  is_compileable = False  # keeps transformers' mask code on its plain (non-compiled) path

  def __init__(self, batch: int, length: int, device: torch.device):
    self.batch, self.length, self.device = batch, length, device
    self.keys: list[torch.Tensor | None] = []
    self.values: list[torch.Tensor | None] = []
    self.position = torch.zeros((), dtype=torch.long, device=device)
    self.prefilling = False  # set by the decoder around the prompt's forward

  def _allocate(self, layer: int, key: torch.Tensor, value: torch.Tensor) -> None:
    """The buffers of one layer, shaped after its first keys and values."""
    while len(self.keys) <= layer:
      self.keys.append(None)
      self.values.append(None)
    shape = (self.batch, key.shape[1], self.length)
    self.keys[layer] = torch.zeros(*shape, key.shape[-1], dtype=key.dtype, device=self.device)
    self.values[layer] = torch.zeros(*shape, value.shape[-1], dtype=value.dtype,
                                     device=self.device)

  def update(self, key: torch.Tensor, value: torch.Tensor, layer_idx: int, *args, **kwargs):
    """Stores the new keys/values (B, H, n, D); returns those the layer attends over."""
    del args, kwargs  # cache_position and rotary tensors of some versions: the position is ours
    if layer_idx >= len(self.keys) or self.keys[layer_idx] is None:
      self._allocate(layer_idx, key, value)
    if self.prefilling:  # the prompt: written at [0, n), attended alone
      n = key.shape[-2]
      self.keys[layer_idx][:, :, :n].copy_(key)
      self.values[layer_idx][:, :, :n].copy_(value)
      return key, value
    index = self.position.view(1)
    self.keys[layer_idx].index_copy_(2, index, key)
    self.values[layer_idx].index_copy_(2, index, value)
    return self.keys[layer_idx], self.values[layer_idx]

  # The prompt's mask is built by the model's own code (as in generate), which asks the cache these
  # questions; decode steps bring their own 4D mask and ask nothing. Python ints: no host sync.
  def get_seq_length(self, layer_idx: int = 0) -> int:
    """Tokens already cached, as models ask before computing positions."""
    del layer_idx
    return 0  # positions are always given explicitly; 0 places the prompt at the start

  def get_query_offset(self, layer_idx: int = 0) -> int:
    """The prompt's first query position."""
    del layer_idx
    return 0

  def get_mask_sizes(self, query, layer_idx: int = 0) -> tuple[int, int]:
    """(key length, key offset) of the prompt's mask: its own keys alone."""
    del layer_idx
    length = query if isinstance(query, int) else query.shape[-1]
    return length, 0


class ModelAdapter:
  """How one family of MLLM is prefilled and stepped: the default suits LLaVA-style models whose
  forward takes pixel values with the prompt and plain input ids afterwards."""

  def __init__(self, model):
    if model.config.get_text_config(decoder=True).is_encoder_decoder or getattr(
        model.config, "use_decoder_only_language_model", True) is False:
      raise ValueError("the language model is an encoder-decoder (e.g. BLIP-2 with Flan-T5)")
    self.model = model
    self.text_module = self._text_module()  # called by decode steps: input ids -> logits
    self.cache_kw = cache_argument(self.text_module)

  def _text_module(self):
    """The module decode steps call."""
    return self.model

  @property
  def generation_config(self):
    """The generation config generate() would use."""
    return self.model.generation_config

  def prompt_ids(self, inputs) -> torch.Tensor:
    """The prompt's token ids (B, L) that generate() would start from."""
    return inputs["input_ids"]

  def prefill(self, inputs, mask2d, position_ids, cache) -> torch.Tensor:
    """Logits (B, V) of the prompt's last position, keys and values written to `cache`."""
    kwargs = {k: v for k, v in inputs.items() if k != "attention_mask"}
    out = self.model(**kwargs, attention_mask=mask2d, position_ids=position_ids,
                     use_cache=True, logits_to_keep=1, **{self.cache_kw: cache})
    return out.logits[:, -1]

  def step(self, tokens, mask4d, position_ids, cache) -> torch.Tensor:
    """Logits (B, V) of one new token per row."""
    out = self.text_module(input_ids=tokens, attention_mask=mask4d, position_ids=position_ids,
                           use_cache=True, **{self.cache_kw: cache})
    return out.logits[:, -1]


class Blip2Adapter(ModelAdapter):
  """BLIP-2: the Q-Former's query embeddings replace the image tokens of `image tokens + BOS`, as
  Blip2ForConditionalGeneration.generate builds them; then its language model alone."""

  def _text_module(self):
    """The module decode steps call."""
    return self.model.language_model

  @property
  def generation_config(self):
    """The generation config generate() would use."""
    return generation_config_of(self.model)

  def prompt_ids(self, inputs) -> torch.Tensor:
    """The prompt's token ids (B, L) that generate() would start from."""
    if inputs.get("input_ids") is not None:
      return inputs["input_ids"]
    config = self.model.config
    start = [config.image_token_index] * config.num_query_tokens + [config.text_config.bos_token_id]
    batch = inputs["pixel_values"].shape[0]
    return torch.tensor([start], device=inputs["pixel_values"].device).repeat(batch, 1)

  def prefill(self, inputs, mask2d, position_ids, cache) -> torch.Tensor:
    """Logits (B, V) of the prompt's last position, keys and values written to `cache`."""
    model = self.model
    image_embeds = model.vision_model(inputs["pixel_values"], return_dict=True).last_hidden_state
    image_mask = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=image_embeds.device)
    queries = model.query_tokens.expand(image_embeds.shape[0], -1, -1)
    query_out = model.qformer(query_embeds=queries, encoder_hidden_states=image_embeds,
                              encoder_attention_mask=image_mask, return_dict=True).last_hidden_state
    projected = model.language_projection(query_out.to(image_embeds.dtype))
    ids = self.prompt_ids(inputs)
    embeds = model.get_input_embeddings()(ids)
    image_slots = (ids == model.config.image_token_index).unsqueeze(-1)
    embeds = embeds.masked_scatter(image_slots, projected.to(embeds.dtype))
    out = self.text_module(inputs_embeds=embeds, attention_mask=mask2d, position_ids=position_ids,
                           use_cache=True, logits_to_keep=1, **{self.cache_kw: cache})
    return out.logits[:, -1]


# Families whose forward the default adapter drives as generate() does (tokens checked equal to
# generate's in tests/test_narration_generation.py): pixel values with the prompt, 1-D positions.
# Others (Qwen2-VL's 3-D rotary positions, Gemma 3's sliding windows, ...) are left to generate().
DEFAULT_ADAPTER_FAMILIES = ("llava", "idefics3", "smolvlm")


def adapter_for(model) -> ModelAdapter:
  """The adapter of `model`'s family; ValueError for a family no adapter was checked on."""
  if hasattr(model, "qformer") and hasattr(model, "language_model"):
    return Blip2Adapter(model)
  family = model.config.model_type
  if family not in DEFAULT_ADAPTER_FAMILIES:
    raise ValueError(f"the static-cache decoder has no adapter checked on {family} models (it "
                     f"has: blip-2, {', '.join(DEFAULT_ADAPTER_FAMILIES)})")
  return ModelAdapter(model)


def cache_argument(module) -> str:
  """The forward's name for the KV cache: `cache` in transformers >= 5.2x, else past_key_values."""
  return "cache" if "cache" in inspect.signature(module.forward).parameters else "past_key_values"


def decoder_layers(module) -> torch.nn.ModuleList:
  """The text decoder's list of layers (the repeated regions worth compiling)."""
  count = module.config.get_text_config(decoder=True).num_hidden_layers
  for name, child in module.named_modules():
    if (name.endswith("layers") and isinstance(child, torch.nn.ModuleList) and len(child) == count
        and "vision" not in name and "qformer" not in name):
      return child
  raise ValueError(f"no decoder layer list of {count} layers in {type(module).__name__}")


def compile_regions(module, backend: str = "inductor") -> int:
  """torch.compile each decoder layer's MLP and norms in place (attention, whose cache writes are
  ours, stays eager); returns how many modules were compiled. Every layer shares one compiled
  graph per input shape, so the compile cost does not grow with depth."""
  # Every compiled module shares one dynamo cache (Module._call_impl's code): each region kind,
  # input shape (prefill, decode) and batch size is one entry, beyond the default limit of 8 as
  # soon as a process sees a few batch sizes; past the limit dynamo would quietly run eagerly.
  dynamo_config = torch._dynamo.config  # pylint: disable=protected-access
  dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, 256)
  compiled = 0
  for layer in decoder_layers(module):
    for name, child in layer.named_children():
      kind = type(child)
      if "attn" in name or kind.__module__.startswith("torch.nn"):
        continue  # attention stays eager; a lone built-in module (OPT's LayerNorm) gains nothing
      if kind.__name__.endswith("MLP") or "Norm" in kind.__name__:
        child.compile(backend=backend, dynamic=False, fullgraph=True)
        compiled += 1
  return compiled


def uncompile_regions(module) -> None:
  """Undoes compile_regions: every module runs its plain forward again."""
  for child in module.modules():
    child._compiled_call_impl = None  # pylint: disable=protected-access


class _BatchState:
  """Everything one decode step reads and writes, allocated once per (batch, cache length) and
  updated in place between batches: a captured CUDA graph replays these addresses."""

  def __init__(self, batch: int, length: int, max_new_tokens: int, device: torch.device):
    self.batch, self.length = batch, length
    self.cache = StaticKVCache(batch, length, device)
    self.tokens = torch.zeros(batch, 1, dtype=torch.long, device=device)  # next step's input
    self.positions = torch.zeros(batch, 1, dtype=torch.long, device=device)  # its position id
    self.step = torch.zeros((), dtype=torch.long, device=device)  # index of the token to choose
    self.finished = torch.zeros(batch, dtype=torch.bool, device=device)
    self.out = torch.zeros(batch, max_new_tokens, dtype=torch.long, device=device)
    self.keep = torch.zeros(batch, length, dtype=torch.bool, device=device)  # keys a row may see
    self.key_index = torch.arange(length, device=device)
    self.graph = None

  def small_buffers(self) -> list[torch.Tensor]:
    """The per-step buffers a graph warm-up advances (restored after the capture)."""
    return [self.tokens, self.positions, self.step, self.finished, self.out, self.cache.position]


class GreedyDecoder:
  """Greedy decoding of a batch of prompts with a static cache; the decode step is replayed from a
  CUDA graph on CUDA (`cuda_graphs`), and the decoder layers' MLPs and norms optionally compiled.

  Every batch of at most the largest batch seen so far reuses one cache when `pad_batches` (rows
  repeated up to that size): one graph and one compiled shape serve a whole run, the last short
  batch included, and the cache memory is allocated once.
  """

  def __init__(self, model, max_new_tokens: int, cuda_graphs: bool | None = None,
               compile: bool | None = None, pad_batches: bool | None = None,
               check_every: int | None = None, compile_backend: str = "inductor"):
    self.adapter = adapter_for(model)
    self.state: _BatchState | None = None
    self.model, self.max_new_tokens = model, max_new_tokens
    self.device = next(model.parameters()).device
    on_cuda = self.device.type == "cuda"
    self.cuda_graphs = on_cuda if cuda_graphs is None else cuda_graphs
    if self.cuda_graphs and not on_cuda:
      raise ValueError("CUDA graphs need the model on a CUDA device")
    self.pad_batches = self.cuda_graphs if pad_batches is None else pad_batches
    # Stopping early needs the host to read `finished`: a sync every few steps costs little.
    self.check_every = check_every or (8 if on_cuda else 1)
    text_config = model.config.get_text_config(decoder=True)
    self.attention = text_config._attn_implementation  # pylint: disable=protected-access
    if self.attention not in ("sdpa", "eager"):
      raise ValueError(f"the static-cache decoder supports sdpa and eager attention, not "
                       f"{self.attention!r}")
    self._read_config()
    self.min_new = torch.zeros((), dtype=torch.long, device=self.device)
    self.compiled, self.compile_checked = 0, False
    if compile if compile is not None else on_cuda:
      self.compiled = compile_regions(self.adapter.text_module, compile_backend)
    self.timings: dict[str, float] = {}
    self.measure = False  # synchronise around prefill and decode to time them (benchmarks)
    # Buffers outside the decoder that a decode step advances (a benchmark's length forcing):
    # restored after a graph capture's warm-up steps, as the decoder's own are.
    self.step_buffers: list[torch.Tensor] = []

  def _read_config(self) -> None:
    """EOS, pad and min_new_tokens from the generation config that generate() would use."""
    config = self.adapter.generation_config
    problems = unsupported_options(config)
    if problems:
      raise ValueError("the static-cache decoder does not apply " + ", ".join(problems))
    eos = eos_ids(config)
    pad = config.pad_token_id if config.pad_token_id is not None else (eos[0] if eos else 0)
    if (eos, pad) != (getattr(self, "eos", None), getattr(self, "pad", None)):
      self.eos, self.pad = eos, pad  # baked into captured graphs: they are dropped
      self.eos_tensor = torch.tensor(eos, dtype=torch.long, device=self.device)
      self.state = None
    self.min_new_tokens = config.min_new_tokens or 0

  def release(self) -> None:
    """Drops the cache and graph (after running out of memory, before a smaller batch)."""
    self.state = None
    if self.device.type == "cuda":
      torch.cuda.empty_cache()

  def _state_for(self, batch: int, length: int) -> _BatchState:
    """The batch state for `batch` rows of `length` tokens: reused, or allocated anew."""
    state = self.state
    if state is not None and state.length >= length and (
        state.batch == batch or (self.pad_batches and state.batch > batch)):
      return state
    if state is not None:
      batch = max(batch, state.batch) if self.pad_batches else batch
      length = max(length, state.length)
      self.release()  # the old cache goes before the new one is allocated
    self.state = _BatchState(batch, cache_length(length), self.max_new_tokens, self.device)
    return self.state

  @torch.inference_mode()
  def generate(self, inputs) -> torch.Tensor:
    """New token ids (B, n) of greedy decoding, as generate() returns them after the prompt: rows
    that met EOS are padded with the pad id, n is the step at which every row had ended (or the
    token budget)."""
    if not self.compiled or self.compile_checked:
      return self._generate(inputs)
    try:  # the first call compiles: a compiler that fails (no Triton, a graph break) is logged
      tokens = self._generate(inputs)
    except torch.OutOfMemoryError:
      raise
    except Exception:  # pylint: disable=broad-except
      log.warning("compiling the decoder layers failed; continuing without torch.compile",
                  exc_info=True)
      uncompile_regions(self.adapter.text_module)
      self.compiled = 0
      self.release()
      tokens = self._generate(inputs)
    self.compile_checked = True
    return tokens

  def _generate(self, inputs) -> torch.Tensor:
    """generate() on the model's device."""
    with (torch.cuda.device(self.device) if self.device.type == "cuda"
          else contextlib.nullcontext()):  # graphs replay on the current device's stream
      return self._generate_on_device(inputs)

  def _generate_on_device(self, inputs) -> torch.Tensor:
    """Prefill, decode and trim one batch."""
    self._read_config()
    inputs = {k: v.to(self.device) for k, v in inputs.items() if v is not None}
    prompt = self.adapter.prompt_ids(inputs)
    mask = inputs.get("attention_mask")
    mask = torch.ones_like(prompt) if mask is None else mask
    batch, length = prompt.shape
    state = self._state_for(batch, length + self.max_new_tokens)
    if state.batch > batch:  # repeat the last row up to the cached batch size
      inputs = {k: pad_rows(v, state.batch) for k, v in inputs.items()}
      mask = pad_rows(mask, state.batch)
    self._reset(state, mask)
    with self._timed("prefill_s"):
      self._prefill(state, inputs, mask)
    with self._timed("decode_s"):
      steps = self._decode(state)
    self.timings["decode_steps"] = steps - 1
    return self._trim(state.out[:batch, :steps])

  @contextlib.contextmanager
  def _timed(self, name: str):
    """Times the block into `timings[name]` (synchronised when measuring)."""
    if self.measure and self.device.type == "cuda":
      torch.cuda.synchronize(self.device)
    start = time.perf_counter()
    yield
    if self.measure and self.device.type == "cuda":
      torch.cuda.synchronize(self.device)
    self.timings[name] = time.perf_counter() - start

  def _reset(self, state: _BatchState, mask: torch.Tensor) -> None:
    """Readies the state's buffers for a new batch with prompt mask `mask` (B, L)."""
    length = mask.shape[1]
    state.keep[:, :length].copy_(mask.bool())
    state.keep[:, length:] = True  # generated tokens are always attended, as in generate
    state.finished.zero_()
    state.step.zero_()
    state.out.fill_(self.pad)
    self.min_new.fill_(self.min_new_tokens)

  def _prefill(self, state: _BatchState, inputs, mask: torch.Tensor) -> None:
    """The prompt through the model (keys and values cached) and the first token chosen."""
    # generate()'s positions: left padding does not shift a row's tokens.
    positions = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)
    state.cache.prefilling = True
    try:
      logits = self.adapter.prefill(inputs, mask, positions, state.cache)
    finally:
      state.cache.prefilling = False
    self._choose(state, logits)
    state.positions.copy_(positions[:, -1:] + 1)
    state.cache.position.fill_(mask.shape[1])

  def _decode(self, state: _BatchState) -> int:
    """Decode steps until every row ended or the budget is spent; returns the tokens chosen."""
    steps = 1
    while steps < self.max_new_tokens:
      if self.eos and (steps - 1) % self.check_every == 0 and bool(state.finished.all()):
        break
      if self.cuda_graphs:
        if state.graph is None:
          state.graph = self._capture(state)
        state.graph.replay()
      else:
        self._decode_step(state)
      steps += 1
    return steps

  def _decode_step(self, state: _BatchState) -> None:
    """One token for every row: a function of `state`'s buffers alone (the CUDA graph's body)."""
    visible = state.keep & (state.key_index <= state.cache.position)  # (B, S)
    mask = visible[:, None, None, :]  # (B, 1, 1, S): the 4D mask the model passes through
    if self.attention == "eager":  # an additive mask, as transformers' eager masks are
      dtype = self.model.dtype
      mask = torch.zeros(mask.shape, dtype=dtype, device=self.device).masked_fill(
          ~mask, torch.finfo(dtype).min)
    logits = self.adapter.step(state.tokens, mask, state.positions, state.cache)
    self._choose(state, logits)
    state.positions.add_(1)
    state.cache.position.add_(1)

  def _choose(self, state: _BatchState, logits: torch.Tensor) -> None:
    """Greedy token of every row; ended rows get the pad id; EOS banned before min_new_tokens."""
    scores = logits.float()  # (B, V), as generate() scores them
    if self.eos:
      banned = state.step < self.min_new
      scores[:, self.eos_tensor] = torch.where(banned, float("-inf"), scores[:, self.eos_tensor])
    token = scores.argmax(-1)
    token = torch.where(state.finished, self.pad, token)
    state.out.index_copy_(1, state.step.view(1), token[:, None])
    if self.eos:
      state.finished |= (token[:, None] == self.eos_tensor).any(-1)
    state.tokens.copy_(token[:, None])
    state.step.add_(1)

  def _capture(self, state: _BatchState) -> "torch.cuda.CUDAGraph":
    """Records one decode step in a CUDA graph. Warm-up steps (which also compile) run on a side
    stream first, as capture requires; the buffers they advance are restored afterwards, and the
    cache positions they wrote are rewritten by the real steps before anything reads them."""
    buffers = state.small_buffers() + self.step_buffers
    saved = [t.clone() for t in buffers]
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
      for _ in range(2):
        self._decode_step(state)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    # thread_local: the pipeline's other threads (decoding, preprocessing) may call CUDA-safe
    # host APIs meanwhile; only this thread's calls must be capturable.
    with torch.cuda.graph(graph, capture_error_mode="thread_local"):
      self._decode_step(state)
    for buffer, value in zip(buffers, saved):
      buffer.copy_(value)
    return graph

  def _trim(self, tokens: torch.Tensor) -> torch.Tensor:
    """Cuts the columns after the step at which the last row ended, as generate() stops there."""
    tokens = tokens.to("cpu", copy=True)  # not a view of the buffer the next batch overwrites
    if not self.eos or tokens.shape[1] == 0:
      return tokens
    ended = torch.isin(tokens, torch.tensor(self.eos))  # (B, n)
    if not ended.any(-1).all():
      return tokens
    last = int(ended.float().argmax(-1).max())  # each row's first EOS; the latest of them
    return tokens[:, :last + 1]


def cache_length(tokens: int) -> int:
  """The cache length allocated for `tokens` (prompt + new): rounded up to a multiple of 64, so
  that prompts a few tokens longer reuse the same buffers and graph."""
  return -(-tokens // 64) * 64


def frame_bytes(model, prompt_length: int, max_new_tokens: int) -> int:
  """Device memory one frame of a batch needs: its KV cache at the length the decoder allocates,
  plus the prefill's activation peak (the MLP's three intermediate tensors and a few residuals)."""
  text = model.config.get_text_config(decoder=True)
  heads = text.num_attention_heads
  kv_heads = getattr(text, "num_key_value_heads", None) or heads
  head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
  inner = getattr(text, "intermediate_size", None) or text.ffn_dim
  size = torch.finfo(model.dtype).bits // 8
  cache = 2 * text.num_hidden_layers * kv_heads * head_dim * size * cache_length(
      prompt_length + max_new_tokens)
  return cache + prompt_length * (3 * inner + 4 * text.hidden_size) * size


def batch_size_for(free_bytes: int, per_frame: int, limit: int = 256) -> int:
  """The largest batch whose frames fit in `free_bytes` after a reserve (cuBLAS and compiler
  workspaces, the graph's pool, fragmentation): a multiple of 8 from 8 frames up."""
  reserve = max(2 << 30, free_bytes // 16)
  fit = max(0, free_bytes - reserve) // per_frame
  if fit >= 8:
    fit = fit // 8 * 8
  return int(max(1, min(limit, fit)))


def pad_rows(tensor: torch.Tensor, rows: int) -> torch.Tensor:
  """`tensor` with its last row repeated up to `rows` rows."""
  extra = rows - tensor.shape[0]
  return torch.cat([tensor, tensor[-1:].expand(extra, *tensor.shape[1:])]) if extra else tensor
