"""Randomly initialised MLLMs built from configs alone: tiny ones for tests (LLaVA-1.5, BLIP-2, and
Idefics3/SmolVLM as a second family for the generic backend; a BERT text encoder and BLIP-2's
retrieval model for the train-free curves), and the real LLaVA-1.5-7b/13b
architectures for speed benchmarks. No weights or tokenizer files are downloaded: the tokenizer is
a word-level one made here, and the chat templates are written here in the format of each family,
which is enough to exercise the real loading, prompting, batching and decoding code paths."""

import os

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (BertConfig, BertModel, Blip2Config, Blip2ForConditionalGeneration,
                          Blip2ForImageTextRetrieval, Blip2Processor,
                          CLIPVisionConfig, Idefics3Config, Idefics3ForConditionalGeneration,
                          Idefics3Processor, LlamaConfig, LlavaConfig,
                          LlavaForConditionalGeneration, LlavaProcessor, OPTConfig,
                          PreTrainedTokenizerFast, SmolVLMConfig, SmolVLMForConditionalGeneration)
from transformers.models.blip.image_processing_pil_blip import BlipImageProcessorPil
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil

from data_prep.narration.settings import LLAVA_V1_SYSTEM, PAPER_PROMPT, VICUNA_V1_SYSTEM

SPECIAL = ["<pad>", "<unk>", "<s>", "</s>", "<image>"]
_TEXT = (f"{PAPER_PROMPT} {LLAVA_V1_SYSTEM} {VICUNA_V1_SYSTEM} USER: ASSISTANT: User: Assistant: "
         "a person is standing in the kitchen holding cup door opens room man woman table")
# Each word as whitespace splits it ("video.") and with its punctuation apart ("video", ".").
WORDS = sorted(set(_TEXT.split()) | set(_TEXT.replace(".", " .").replace(",", " ,").split()))

# A chat template in the format of llava-hf's llava-1.5 processors:
# `USER: <image>\n{text} ASSISTANT:`.
LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] | upper }}: "
    "{% for part in message['content'] if part['type'] == 'image' %}<image>\n{% endfor %}"
    "{% for part in message['content'] if part['type'] == 'text' %}{{ part['text'] }} {% endfor %}"
    "{% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}")

# One in the format of Idefics3/SmolVLM's: `User:<image>{text}<end_of_utterance>\nAssistant:`.
IDEFICS3_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] | capitalize }}:"
    "{% for part in message['content'] %}{% if part['type'] == 'image' %}<image>"
    "{% else %}{{ part['text'] }}{% endif %}{% endfor %}<end_of_utterance>\n{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}")

# LLaVA prompts of different lengths: a batch of them is left-padded by a different amount per row.
VARIED_PROMPTS = ["USER: <image>\nthis ASSISTANT:",
                  "USER: <image>\n" + "a person is standing in the kitchen . " * 3 + "ASSISTANT:",
                  "USER: <image> ASSISTANT:", "USER: <image>\nroom ASSISTANT:",
                  "USER: <image>\ndoor opens ASSISTANT:",
                  "USER: <image>\nman woman table ASSISTANT:"]

# Language and vision sizes of the released LLaVA-1.5 checkpoints (CLIP ViT-L/14-336 + Vicuna).
ARCHITECTURES = {
    "tiny": dict(text=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=4),
                 vision=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                             num_attention_heads=4, image_size=32, patch_size=8)),
    "llava-1.5-7b": dict(text=dict(hidden_size=4096, intermediate_size=11008,
                                   num_hidden_layers=32, num_attention_heads=32,
                                   num_key_value_heads=32),
                         vision=dict(hidden_size=1024, intermediate_size=4096,
                                     num_hidden_layers=24, num_attention_heads=16,
                                     image_size=336, patch_size=14)),
    "llava-1.5-13b": dict(text=dict(hidden_size=5120, intermediate_size=13824,
                                    num_hidden_layers=40, num_attention_heads=40,
                                    num_key_value_heads=40),
                          vision=dict(hidden_size=1024, intermediate_size=4096,
                                      num_hidden_layers=24, num_attention_heads=16,
                                      image_size=336, patch_size=14)),
}


def make_tokenizer(extra_vocab: int = 0) -> PreTrainedTokenizerFast:
  """A word-level tokenizer over the prompt's words (+ `extra_vocab` filler tokens)."""
  vocab = {tok: i for i, tok in enumerate(SPECIAL + WORDS + [f"w{i}" for i in range(extra_vocab)])}
  core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
  core.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit()])
  tok = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", pad_token="<pad>",
                                bos_token="<s>", eos_token="</s>",
                                additional_special_tokens=["<image>"])
  tok.padding_side = "left"
  return tok


def build_llava(architecture: str = "tiny", seed: int = 0, vocab_size: int | None = None):
  """(model, processor) of a random LLaVA-1.5-style model."""
  sizes = ARCHITECTURES[architecture]
  torch.manual_seed(seed)
  tokenizer = make_tokenizer(0 if vocab_size is None else max(0, vocab_size - len(SPECIAL)
                                                              - len(WORDS)))
  vision = CLIPVisionConfig(**sizes["vision"], projection_dim=sizes["vision"]["hidden_size"])
  text = LlamaConfig(**sizes["text"], vocab_size=len(tokenizer), max_position_embeddings=4096,
                     pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                     eos_token_id=tokenizer.eos_token_id)
  patches = (sizes["vision"]["image_size"] // sizes["vision"]["patch_size"]) ** 2
  config = LlavaConfig(vision_config=vision, text_config=text,
                       image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
                       image_seq_length=patches, vision_feature_select_strategy="default",
                       vision_feature_layer=-2)
  size = sizes["vision"]["image_size"]
  image_processor = CLIPImageProcessorPil(size={"shortest_edge": size},
                                          crop_size={"height": size, "width": size})
  processor = LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer,
                             patch_size=sizes["vision"]["patch_size"],
                             vision_feature_select_strategy="default",
                             num_additional_image_tokens=1, chat_template=LLAVA_CHAT_TEMPLATE)
  model = LlavaForConditionalGeneration(config)
  model.generation_config.pad_token_id = tokenizer.pad_token_id
  return model.eval(), processor


def build_blip2(seed: int = 0):
  """(model, processor) of a tiny random BLIP-2 (OPT language model)."""
  torch.manual_seed(seed)
  tokenizer = make_tokenizer()
  num_query = 4
  config = Blip2Config(
      vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, image_size=32, patch_size=8),
      qformer_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=4, encoder_hidden_size=32, vocab_size=64),
      text_config=OPTConfig(hidden_size=32, ffn_dim=64, num_hidden_layers=2,
                            num_attention_heads=4, vocab_size=len(tokenizer),
                            word_embed_proj_dim=32, pad_token_id=tokenizer.pad_token_id,
                            bos_token_id=tokenizer.bos_token_id,
                            eos_token_id=tokenizer.eos_token_id),
      num_query_tokens=num_query, image_token_index=tokenizer.convert_tokens_to_ids("<image>"))
  image_processor = BlipImageProcessorPil(size={"height": 32, "width": 32})
  processor = Blip2Processor(image_processor=image_processor, tokenizer=tokenizer,
                             num_query_tokens=num_query)
  model = Blip2ForConditionalGeneration(config)
  model.generation_config.pad_token_id = tokenizer.pad_token_id
  return model.eval(), processor


def build_text_encoder(seed: int = 0):
  """(model, tokenizer) of a tiny random BERT, a sentence encoder for the train-free text curve."""
  torch.manual_seed(seed)
  tokenizer = make_tokenizer()
  tokenizer.padding_side = "right"
  config = BertConfig(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1,
                      num_attention_heads=2, intermediate_size=32, max_position_embeddings=64,
                      pad_token_id=tokenizer.pad_token_id)
  return BertModel(config).eval(), tokenizer


def build_blip2_retrieval(seed: int = 0):
  """(model, processor) of a tiny random BLIP-2 with its image-text matching and contrastive
  heads (Blip2ForImageTextRetrieval), as the train-free frame curve loads it."""
  torch.manual_seed(seed)
  tokenizer = make_tokenizer()
  tokenizer.padding_side = "right"
  config = Blip2Config(
      vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=4, image_size=32, patch_size=8),
      qformer_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                          num_attention_heads=4, encoder_hidden_size=32,
                          vocab_size=len(tokenizer), max_position_embeddings=64,
                          use_qformer_text_input=True),
      num_query_tokens=4, image_text_hidden_size=16)
  image_processor = BlipImageProcessorPil(size={"height": 32, "width": 32})
  processor = Blip2Processor(image_processor=image_processor, tokenizer=tokenizer)
  return Blip2ForImageTextRetrieval(config).eval(), processor


def build_idefics3(seed: int = 0, family: str = "idefics3"):
  """(model, processor) of a tiny random Idefics3 (SigLIP-style vision tower, pixel-shuffle
  connector, Llama; SmolVLM's architecture with family="smolvlm") whose processor splits each
  frame into 32x32 tiles plus a global view, as the released ones do at their sizes."""
  torch.manual_seed(seed)
  tokenizer = make_tokenizer()
  tokenizer.add_tokens([f"<row_{i + 1}_col_{j + 1}>" for i in range(6) for j in range(6)])
  tokenizer.add_special_tokens({"additional_special_tokens": [
      "<fake_token_around_image>", "<image>", "<end_of_utterance>", "<global-img>"]})
  image_processor = Idefics3ImageProcessorPil(size={"longest_edge": 64},
                                              max_image_size={"longest_edge": 32})
  # 32x32 tiles of 8x8 patches, merged 2x2 by the connector: 4 image tokens per tile.
  processor = Idefics3Processor(image_processor=image_processor, tokenizer=tokenizer,
                                image_seq_len=4, chat_template=IDEFICS3_CHAT_TEMPLATE)
  text = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, vocab_size=len(tokenizer),
                     pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                     eos_token_id=tokenizer.eos_token_id)
  config_class, model_class = {
      "idefics3": (Idefics3Config, Idefics3ForConditionalGeneration),
      "smolvlm": (SmolVLMConfig, SmolVLMForConditionalGeneration)}[family]
  config = config_class(
      vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, image_size=32, patch_size=8),
      text_config=text, scale_factor=2, pad_token_id=tokenizer.pad_token_id,
      image_token_id=tokenizer.convert_tokens_to_ids("<image>"))
  model = model_class(config)
  model.generation_config.pad_token_id = tokenizer.pad_token_id
  model.generation_config.eos_token_id = tokenizer.eos_token_id
  return model.eval(), processor


def spread_weights(model, std: float = 0.2, seed: int = 0):
  """Redraws every weight matrix from N(0, std^2): at the default initialisation (std 0.02) a tiny
  model's greedy tokens barely depend on the image, the prompt or the position, so a test that
  compares two decoders would pass even with a wrong mask or position; at 0.2 they do depend."""
  generator = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for param in model.parameters():
      if param.dim() >= 2:
        param.copy_(torch.randn(param.shape, generator=generator) * std)
  return model


def save(model, processor, out_dir: str) -> str:
  """Writes a Hugging Face model directory that from_pretrained(out_dir) loads."""
  os.makedirs(out_dir, exist_ok=True)
  model.save_pretrained(out_dir)
  processor.save_pretrained(out_dir)
  return out_dir
