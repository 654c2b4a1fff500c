"""The static-cache greedy decoder against model.generate on tiny random models (float32, CPU): the
same tokens with left padding, early EOS at different steps, min_new_tokens, batches reused and
padded, eager attention, compiled regions; the memory-based batch size worked by hand."""

import contextlib
import logging

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import Blip2Config, Blip2ForConditionalGeneration, T5Config

from data_prep.narration import generation
from data_prep.narration.generation import GreedyDecoder
from data_prep.narration.narrators import Blip2Narrator, LlavaNarrator
from data_prep.testing import random_mllm

MAX_NEW = 14
TEXTS = random_mllm.VARIED_PROMPTS
# Idefics3/SmolVLM prompts of different lengths, in their chat format.
IDEFICS_TEXTS = [f"User:<image>{question}<end_of_utterance>\nAssistant:"
                 for question in ["this", "a person is standing in the kitchen . " * 3, "",
                                  "room", "door opens", "man woman table"]]

def images(count: int, seed: int = 0) -> list:
  rng = np.random.default_rng(seed)
  return [Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8))
          for _ in range(count)]


def build(kind: str, seed: int = 1):
  """(model, inputs, generation config generate() uses, prompt length generate() echoes)."""
  if kind == "llava":
    model, processor = random_mllm.build_llava("tiny", seed=seed)
    inputs = processor(images=images(len(TEXTS), seed), text=TEXTS, padding=True,
                       return_tensors="pt")
    config, echoed = model.generation_config, inputs["input_ids"].shape[1]
  elif kind == "blip2":
    model, processor = random_mllm.build_blip2(seed=seed)
    inputs = processor(images=images(len(TEXTS), seed), return_tensors="pt")
    config = model.language_model.generation_config
    echoed = model.config.num_query_tokens + 1  # generate() returns its image tokens + BOS
  else:  # idefics3, smolvlm: each frame split into tiles plus a global view
    model, processor = random_mllm.build_idefics3(seed, family=kind)
    inputs = processor(images=images(len(IDEFICS_TEXTS), seed), text=IDEFICS_TEXTS, padding=True,
                       return_tensors="pt")
    config, echoed = model.generation_config, inputs["input_ids"].shape[1]
  # Spread enough that each row's tokens depend on its image, prompt and positions.
  random_mllm.spread_weights(model, 0.5 if kind == "blip2" else 0.2, seed)
  return model, dict(inputs), config, echoed


def reference(model, inputs, echoed: int, max_new: int = MAX_NEW) -> torch.Tensor:
  """model.generate's new tokens (greedy)."""
  with torch.inference_mode():
    out = model.generate(**inputs, do_sample=False, num_beams=1, max_new_tokens=max_new)
  return out[:, echoed:]


def set_frequent_eos(model, inputs, config, echoed) -> None:
  """Makes the three most frequent generated tokens (neither the pad id nor a first token) end a
  caption, so that rows stop early, each at its own step."""
  tokens = reference(model, inputs, echoed)
  later = tokens[:, 1:]
  candidates = later[(later != config.pad_token_id) & ~torch.isin(later, tokens[:, 0])]
  values, counts = torch.unique(candidates, return_counts=True)
  config.eos_token_id = values[counts.argsort(descending=True)][:3].tolist()


def first_eos(tokens: torch.Tensor, eos: list[int]) -> list[int]:
  """Each row's first EOS step (the number of columns when it has none)."""
  ended = torch.isin(tokens, torch.tensor(eos))
  return [int(row.float().argmax()) if row.any() else tokens.shape[1] for row in ended]


@pytest.mark.parametrize("kind", ["llava", "blip2", "idefics3", "smolvlm"])
@pytest.mark.parametrize("min_new,pad_batches,check_every", [(0, False, 1), (3, True, 3)])
def test_tokens_equal_generate_with_padding_and_early_eos(kind, min_new, pad_batches,
                                                          check_every):
  model, inputs, config, echoed = build(kind)
  set_frequent_eos(model, inputs, config, echoed)
  config.min_new_tokens = min_new
  expected = reference(model, inputs, echoed)
  stops = first_eos(expected, config.eos_token_id)
  # The case is the one the test is about: rows end early, at different steps, and pad after.
  assert min(stops) < MAX_NEW and len(set(stops)) >= 2 and min(stops) >= min_new
  decoder = GreedyDecoder(model, MAX_NEW, pad_batches=pad_batches, check_every=check_every)
  got = decoder.generate(inputs)
  assert got.shape == expected.shape and torch.equal(got, expected)


def test_min_new_tokens_bans_eos_as_generate_does():
  model, inputs, config, echoed = build("llava")
  set_frequent_eos(model, inputs, config, echoed)
  free = reference(model, inputs, echoed)
  config.min_new_tokens = 4
  banned = reference(model, inputs, echoed)
  assert not torch.equal(free, banned)  # some row would have ended within 4 tokens
  assert torch.equal(GreedyDecoder(model, MAX_NEW).generate(inputs), banned)


@pytest.mark.parametrize("pad_batches", [False, True])
def test_batches_of_other_sizes_reuse_the_decoder(pad_batches):
  model, inputs, config, echoed = build("llava", seed=2)
  set_frequent_eos(model, inputs, config, echoed)
  decoder = GreedyDecoder(model, MAX_NEW, pad_batches=pad_batches)
  cached, results = [], []
  for rows in (slice(0, 6), slice(1, 4), slice(2, 6), slice(0, 6)):
    part = {k: v[rows] for k, v in inputs.items()}
    results.append((decoder.generate(part), reference(model, part, echoed)))
    assert torch.equal(*results[-1]), rows
    cached.append(decoder.state.batch)
  assert all(torch.equal(got, expected) for got, expected in results)  # none overwritten later
  # Padded batches keep one cache of the largest batch; unpadded ones follow the batch size.
  assert cached == ([6, 6, 6, 6] if pad_batches else [6, 3, 4, 6])


def stand_in_cuda_graphs(monkeypatch, decoder, replays: list) -> None:
  """Replaces the CUDA graph machinery by stand-ins that run the decode step eagerly (a CPU
  checks what it can: what the warm-up before a capture, and the captured step itself, which a
  real capture records without running, leave behind); replays note the step they ran."""

  class StandInGraph:
    def replay(self):
      replays.append(decoder.state.step.item())
      decoder._decode_step(decoder.state)  # pylint: disable=protected-access

  class StandInStream:
    def wait_stream(self, other):
      del other

  monkeypatch.setattr(torch.cuda, "CUDAGraph", StandInGraph)
  monkeypatch.setattr(torch.cuda, "graph", lambda graph, **kw: contextlib.nullcontext())
  monkeypatch.setattr(torch.cuda, "Stream", StandInStream)
  monkeypatch.setattr(torch.cuda, "current_stream", lambda *args: StandInStream())
  monkeypatch.setattr(torch.cuda, "stream", lambda stream: contextlib.nullcontext())
  decoder.cuda_graphs = True


def test_graph_capture_warm_up_is_undone(monkeypatch):
  # The warm-up steps before a capture leave no trace in the tokens.
  model, inputs, config, echoed = build("llava", seed=8)
  set_frequent_eos(model, inputs, config, echoed)
  expected = reference(model, inputs, echoed)
  decoder = GreedyDecoder(model, MAX_NEW, pad_batches=True, check_every=4)  # as on CUDA
  replays = []
  stand_in_cuda_graphs(monkeypatch, decoder, replays)
  assert torch.equal(decoder.generate(inputs), expected)
  assert replays[:3] == [1, 2, 3]  # the replays start at the first decode step, in order
  replays.clear()
  part = {k: v[:4] for k, v in inputs.items()}
  assert torch.equal(decoder.generate(part), reference(model, part, echoed))
  assert replays and decoder.state.batch == 6  # the graph's batch, padded


@pytest.mark.parametrize("graphs", [False, True])
def test_the_benchmarks_lengths_end_captions_where_drawn(monkeypatch, graphs):
  # bench/narrate.py --lengths eos: the wrapped head ends row i after lengths[i] tokens, with
  # model.generate and with the fast path (its counter restored after a graph's warm-up).
  from bench.narrate import EndAtLengths  # pylint: disable=import-outside-toplevel
  model, inputs, config, echoed = build("llava", seed=9)
  eos = config.eos_token_id
  head = EndAtLengths(model.lm_head, eos, 8, torch.device("cpu"))
  model.lm_head = head
  lengths = [3, 7, 1, 12, 5, 9]
  head.start(lengths)
  expected = reference(model, inputs, echoed)
  assert first_eos(expected, [eos]) == lengths
  decoder = GreedyDecoder(model, MAX_NEW, pad_batches=graphs, check_every=4 if graphs else 1)
  decoder.step_buffers = [head.calls]
  if graphs:
    stand_in_cuda_graphs(monkeypatch, decoder, [])
  for rows in (slice(0, 6), slice(1, 5)):
    head.start(lengths[rows])
    got = decoder.generate({k: v[rows] for k, v in inputs.items()})
    assert first_eos(got, [eos]) == lengths[rows]
    assert torch.equal(got, expected[rows][:, :got.shape[1]])


def test_pad_id_defaults_to_eos_and_eager_attention():
  model, inputs, config, echoed = build("llava", seed=3)
  model.set_attn_implementation("eager")  # the additive float mask instead of sdpa's boolean one
  set_frequent_eos(model, inputs, config, echoed)
  config.pad_token_id = None  # generate() then pads ended rows with the first EOS id
  expected = reference(model, inputs, echoed)
  decoder = GreedyDecoder(model, MAX_NEW)
  assert decoder.attention == "eager" and decoder.pad == config.eos_token_id[0]
  assert torch.equal(decoder.generate(inputs), expected)


def test_compiled_regions_give_the_same_tokens():
  model, inputs, config, echoed = build("llava", seed=4)
  expected = reference(model, inputs, echoed)
  # The eager backend traces every region with dynamo (fullgraph: a graph break would raise)
  # without the minutes a CPU compiler takes; CUDA runs use inductor.
  decoder = GreedyDecoder(model, MAX_NEW, compile=True, compile_backend="eager")
  layers = model.config.text_config.num_hidden_layers
  assert decoder.compiled == 3 * layers  # each layer's MLP and two RMS norms
  assert torch.equal(decoder.generate(inputs), expected)
  assert torch.equal(decoder.generate(inputs), expected)


def test_a_failing_compiler_falls_back_to_eager_with_a_warning(caplog):
  model, inputs, config, echoed = build("llava", seed=5)
  expected = reference(model, inputs, echoed)

  def broken_backend(graph_module, example_inputs):
    raise RuntimeError("no compiler here")

  decoder = GreedyDecoder(model, MAX_NEW, compile=True, compile_backend=broken_backend)
  with caplog.at_level(logging.WARNING, logger="data_prep"):
    assert torch.equal(decoder.generate(inputs), expected)
  assert decoder.compiled == 0 and "continuing without torch.compile" in caplog.text
  assert torch.equal(decoder.generate(inputs), expected)


@pytest.mark.parametrize("narrator_class,kind", [(LlavaNarrator, "llava"),
                                                 (Blip2Narrator, "blip2")])
def test_narrators_caption_alike_with_either_generation(narrator_class, kind):
  model, _, _, _ = build(kind, seed=6)
  processor = (random_mllm.build_llava("tiny") if kind == "llava" else random_mllm.build_blip2())[1]
  frames = images(5, seed=6)
  fast = narrator_class(None, "cpu", max_new_tokens=MAX_NEW, components=(model, processor))
  assert fast.decoder is not None
  captions = fast.caption(frames)
  slow = narrator_class(None, "cpu", max_new_tokens=MAX_NEW, components=(model, processor),
                        fast=False)
  assert slow.decoder is None and slow.caption(frames) == captions
  assert len(set(captions)) > 1  # the captions depend on the image


def test_options_the_decoder_does_not_apply_fall_back_to_generate(caplog):
  model, processor = random_mllm.build_llava("tiny")
  model.generation_config.repetition_penalty = 1.3
  with caplog.at_level(logging.WARNING, logger="data_prep"):
    narrator = LlavaNarrator(None, "cpu", max_new_tokens=6, components=(model, processor))
  assert narrator.decoder is None and "repetition_penalty=1.3" in caplog.text


def test_frame_memory_and_batch_size_by_hand():
  with torch.device("meta"):
    model, _ = random_mllm.build_llava("llava-1.5-13b", vocab_size=32064)
  model.to(torch.bfloat16)
  # 607 prompt tokens (576 image + 31 text), 60 new: the cache holds 704 (667 rounded up to 64)
  # positions of 40 layers x (keys + values) x 5120 bf16 values; the prefill's MLP peak adds
  # 607 x (3 x 13824 + 4 x 5120) bf16 values.
  cache = 40 * 2 * 5120 * 704 * 2
  activations = 607 * (3 * 13824 + 4 * 5120) * 2
  assert generation.frame_bytes(model, 607, 60) == cache + activations == 651_926_528
  gib = 1 << 30
  # H100 80GB with the 13B weights loaded: ~54 GiB free, 1/16 kept back, 83.4 frames fit -> 80.
  assert generation.batch_size_for(54 * gib, cache + activations) == 80
  assert generation.batch_size_for(114 * gib, cache + activations) == 176  # H200
  assert generation.batch_size_for(int(2.5 * gib), 200 << 20) == 2  # below 8: not rounded
  assert generation.batch_size_for(gib, 200 << 20) == 1  # never below one frame
  assert generation.batch_size_for(400 * gib, 1 << 20) == 256  # capped


def test_auto_batch_size_reads_the_devices_free_memory(monkeypatch):
  model, processor = random_mllm.build_llava("tiny")
  narrator = LlavaNarrator(None, "cpu", max_new_tokens=10, components=(model, processor))
  assert narrator.auto_batch_size() == 8  # a CPU has no device memory to size against
  prompt = narrator.prepare(images(1))["input_ids"].shape[1]
  per_frame = generation.frame_bytes(model, prompt, 10)
  # 37 frames' worth beyond the 2 GiB reserve: 30 free on the device, 7 held free by torch's
  # allocator; a multiple of 8 -> 32.
  monkeypatch.setattr(narrator, "device", torch.device("cuda"))
  monkeypatch.setattr(torch.cuda, "mem_get_info",
                      lambda device: ((2 << 30) + 30 * per_frame, 80 << 30))
  monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device: 9 * per_frame)
  monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device: 2 * per_frame)
  assert narrator.auto_batch_size() == 32


def test_families_without_a_checked_adapter_are_left_to_generate(monkeypatch):
  model, _, _, _ = build("idefics3")
  monkeypatch.setattr(generation, "DEFAULT_ADAPTER_FAMILIES", ("llava",))
  with pytest.raises(ValueError, match="no adapter checked on idefics3 models"):
    GreedyDecoder(model, MAX_NEW)


def test_encoder_decoder_language_models_are_left_to_generate():
  config = Blip2Config(
      vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=4, image_size=32, patch_size=8),
      qformer_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                          num_attention_heads=4, encoder_hidden_size=32, vocab_size=64),
      text_config=T5Config(d_model=32, d_ff=64, num_layers=1, num_heads=4, vocab_size=64, d_kv=8),
      num_query_tokens=4)
  with pytest.raises(ValueError, match="encoder-decoder"):  # BLIP-2 with Flan-T5
    GreedyDecoder(Blip2ForConditionalGeneration(config), MAX_NEW)
