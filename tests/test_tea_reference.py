"""TEA's own parts against references written from the equations (docs/design.md sections 1, 2, 9
and 10; TEA Eq. 3-5 and 12-14 as implemented): narrative pooling per snippet, the concat / add /
attention merges, the paragraph branch's inputs, the mixing (p_v + alpha p_c) / (1 + alpha) and its
span loss. The model side is transcribed in PyTorch float64, so that autograd gives the reference
gradients; the Flax modules run on random weights (biases and LayerNorms included)."""

import json
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from conftest import random_batch, tiny_model_config

from data_prep.narratives import MeanWordVectorEncoder, read_narratives, video_narrative
from tea_jax import inference, losses
from tea_jax.model.config import ModelConfig
from tea_jax.model.embeddings import NarrativeMerge, positional_table
from tea_jax.model.encoder import FrameEncoder
from tea_jax.model.fusion import HighlightGate
from tea_jax.model.span_predictor import SpanHead

TOL = 1e-5


def assert_close(got, want, tol=TOL, what=""):
  """|got - want| <= tol * max(|want|_max, 0.1): float32 code against a float64 reference,
  relative to the array's own scale (the floor for gradients that vanish analytically)."""
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  assert got.shape == want.shape, (what, got.shape, want.shape)
  scale = max(0.1, float(np.abs(want).max(initial=0.0)))
  error = float(np.abs(got - want).max(initial=0.0))
  assert error <= tol * scale, f"{what}: max error {error:.3g} (scale {scale:.3g})"


def check_gradient(got, want, what):
  """A parameter's gradient against the reference; an attention key bias has none (a softmax
  ignores a shift of its logits), so both sides must be 0 up to float noise."""
  if what.endswith("attention/key/bias"):
    assert np.abs(want).max() < 1e-12 and np.abs(np.asarray(got)).max() < 1e-5, what
    return
  assert np.abs(want).max() > 1e-4, what  # the test sees this gradient
  assert_close(got, want, what=what)


# ---------------------------------------------------------------------------------------------
# Narrative pooling per snippet (TEA Eq. 3, design section 1), in plain Python floats.

def sentence_feature(text, vectors, dim):
  """Mean of the word vectors of the caption's words; zeros when none has a vector."""
  rows = [vectors[w] for w in text.split() if w in vectors]
  if not rows:
    return [0.0] * dim
  return [sum(r[i] for r in rows) / len(rows) for i in range(dim)]


def pooled_reference(items, vectors, dim, duration, v_len):
  """c_k = mean of the captions with floor(t / (d / v_len)) = k, else the caption nearest to the
  snippet's centre (the first on a tie)."""
  width = duration / v_len
  features = [sentence_feature(text, vectors, dim) for _, text in items]
  out = []
  for k in range(v_len):
    inside = [f for (t, _), f in zip(items, features) if math.floor(t / width) == k]
    if inside:
      out.append([sum(f[i] for f in inside) / len(inside) for i in range(dim)])
      continue
    centre = (k + 0.5) * width
    best = 0
    for n, (t, _) in enumerate(items):
      if abs(t - centre) < abs(items[best][0] - centre):
        best = n
    out.append(features[best])
  return np.array(out)


@pytest.mark.parametrize("duration,v_len", [(10.0, 5), (7.3, 9), (30.0, 4)])
def test_narrative_pooling_matches_eq3(tmp_path, duration, v_len):
  rng = np.random.default_rng(v_len)
  dim = 5
  words = ["person", "opens", "door", "kitchen", "cup", "table", "walks", "sits"]
  vectors = {w: rng.normal(size=dim).tolist() for w in words}
  # Captions out of time order, two at the same second, one after the video's end, one whose
  # words have no vector (zeros), several in one snippet, and snippets with none: they take the
  # caption nearest to their centre, with an exact tie in the first case (snippet 1, centre 3 s,
  # between t = 1 and t = 5: the first wins).
  captions = [(5.0, "person opens door"), (1.0, "cup on table"), (1.0, "person sits"),
              (6.5, "unknown words only"), (duration + 2.0, "walks kitchen"),
              (0.2, "door door cup"), (duration - 0.01, "table")]
  path = tmp_path / "narratives.jsonl"
  path.write_text(json.dumps({"video_id": "v", "interval": 1.0, "narratives": [
      {"t": t, "text": text} for t, text in captions]}) + "\n")
  videos, problems = read_narratives(str(path))
  assert not problems
  items = videos["v"]
  assert [t for t, _ in items] == sorted(t for t, _ in captions)  # read in time order
  index = {w: i for i, w in enumerate(words)}
  table = np.array([vectors[w] for w in words], np.float32)
  got = video_narrative(items, MeanWordVectorEncoder(index, table), duration, v_len)
  assert got.dtype == np.float32 and got.shape == (v_len, dim)
  want = pooled_reference(items, vectors, dim, duration, v_len)
  if duration == 10.0:  # the tie is there, and goes to the first caption
    np.testing.assert_allclose(want[1], sentence_feature("cup on table", vectors, dim))
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# The model side in PyTorch float64 (design sections 1-3, 9).

def to_torch(tree, grad=False):
  """A nested dict of arrays as float64 torch leaves."""
  if isinstance(tree, dict):
    return {k: to_torch(v, grad) for k, v in tree.items()}
  return torch.tensor(np.asarray(tree, np.float64), requires_grad=grad)


def linear(x, p):
  return x @ p["kernel"] + p["bias"]


def layer_norm(x, p, eps=1e-6):
  mean = x.mean(-1, keepdim=True)
  var = ((x - mean) ** 2).mean(-1, keepdim=True)
  return (x - mean) / torch.sqrt(var + eps) * p["scale"] + p["bias"]


def attention_layer(target, source, mask, p, heads):
  """Section 3: post-norm layer, masked logits + (1 - M) (-1e30), no output projection."""
  b, lt, d = target.shape
  dh = d // heads

  def split(x, name):
    return linear(x, p["attention"][name]).reshape(b, x.shape[1], heads, dh).transpose(1, 2)

  q, k, v = split(target, "query"), split(source, "key"), split(source, "value")
  logits = q @ k.transpose(-1, -2) / math.sqrt(dh) + (1.0 - mask[:, None]) * -1e30
  context = (torch.softmax(logits, -1) @ v).transpose(1, 2).reshape(b, lt, d)
  h = layer_norm(target + context, p["norm1"])
  ffn = linear(torch.relu(linear(h, p["ffn"]["dense_in"])), p["ffn"]["dense_out"])
  return layer_norm(h + ffn, p["norm2"])


def merge_reference(merge, video, narrative, video_mask, p, heads):
  """Section 2's table: S' from the projected snippets S and projected narratives C."""
  if merge == "concat":  # Eq. 4-5
    hidden = torch.relu(linear(torch.cat([video, narrative], -1), p["dense_in"]))
    return linear(hidden, p["dense_out"])
  if merge == "add":
    return video + narrative
  assert merge == "attention"
  mask = video_mask[:, :, None] * video_mask[:, None, :]  # target x source = video x video
  return attention_layer(video, narrative, mask, p["attention"]["layer"], heads)


def sinusoid(positions, dim):
  """pe[p, 2i] = sin(p exp(-2i ln(10000) / D)), pe[p, 2i + 1] = cos(same), float64."""
  table = np.zeros((positions, dim))
  for pos in range(positions):
    for i in range(0, dim, 2):
      angle = pos * math.exp(-i * math.log(10000.0) / dim)
      table[pos, i], table[pos, i + 1] = math.sin(angle), math.cos(angle)
  return table


def randomized(variables, seed):
  """Every parameter and frozen table redrawn (LayerNorm scales around 1): zero biases and unit
  scales would hide a missing or misplaced term."""
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    name = str(getattr(path[-1], "key", path[-1]))
    x = rng.normal(0.0, 0.4, leaf.shape)
    return jnp.asarray(1.0 + x if name == "scale" else x, jnp.float32)

  return jax.tree_util.tree_map_with_path(draw, variables)


@pytest.mark.parametrize("merge", ["concat", "add", "attention"])
def test_narrative_merge_matches_the_reference_forward_and_gradients(merge):
  rng = np.random.default_rng(1)
  config = ModelConfig(hidden=16, num_heads=4, merge=merge)
  video = rng.normal(size=(3, 10, 16)).astype(np.float32)
  narrative = rng.normal(size=(3, 10, 16)).astype(np.float32)
  mask = (np.arange(10)[None] < np.array([10, 6, 1])[:, None]).astype(np.float32)
  module = NarrativeMerge(config)
  variables = module.init(jax.random.key(0), video, narrative, mask, train=False)
  params = randomized(variables, 2).get("params", {})
  weights = rng.normal(size=(3, 10, 16))  # a random linear functional of the output

  def objective(params, video, narrative):
    out = module.apply({"params": params}, video, narrative, mask, train=False)
    return jnp.sum(out * weights), out

  grads, out = jax.grad(objective, argnums=(0, 1, 2), has_aux=True)(params, video, narrative)
  p, tv, tn = to_torch(params, True), to_torch(video, True), to_torch(narrative, True)
  want = merge_reference(merge, tv, tn, to_torch(mask), p, config.num_heads)
  assert_close(out, want.detach().numpy(), what=f"{merge} forward")
  (want * torch.tensor(weights)).sum().backward()
  assert_close(grads[1], tv.grad.numpy(), what="d/d video")
  assert_close(grads[2], tn.grad.numpy(), what="d/d narrative")
  flat = jax.tree_util.tree_flatten_with_path(grads[0])[0]
  assert len(flat) == {"concat": 4, "add": 0, "attention": 14}[merge]
  for path, grad in flat:
    node = p
    for key in path:
      node = node[key.key]
    check_gradient(grad, node.grad.numpy(), "/".join(k.key for k in path))


# ---------------------------------------------------------------------------------------------
# The whole TEA model: what the merge and the paragraph branch receive, the final distribution,
# its loss, and the gradients that reach TEA's own parameters.

def tea_setup(merge, alpha=0.5, seed=0):
  """(ModelConfig, experiment-style config, random variables, batch with labels)."""
  model = tiny_model_config(merge=merge, paragraph_branch=True, alpha=alpha, dropout=0.0)
  config = ModelConfig.from_config(model)
  variables = randomized(inference.variable_shapes(model), seed + 10)
  rng = np.random.default_rng(seed)
  batch = random_batch(rng, config, lengths=[16, 11, 5], words=[5, 3, 7], length=16,
                       num_words=8)
  batch.update(start_label=np.array([2, 4, 0], np.int32), end_label=np.array([9, 10, 3], np.int32),
               duration=np.array([30.0, 21.0, 8.5], np.float32))
  return config, {"model": model}, variables, batch


def module_path(context):
  return tuple(context.module.scope.path)


def apply_tea(config, variables, batch, deltas=None, seen=None):
  """TEA forward; `seen` collects each frame encoder's inputs; `deltas` are added to the merge's
  output, to the paragraph encoder's frames and to the span heads' outputs (zeros: the same
  forward, and their gradients are the loss's cotangents there)."""

  def interceptor(next_fun, args, kwargs, context):
    path = module_path(context)
    if context.method_name != "__call__":
      return next_fun(*args, **kwargs)
    if isinstance(context.module, FrameEncoder):
      if deltas is not None and path == ("paragraph_encoder",):
        args = (args[0] + deltas["paragraph_frames"],) + tuple(args[1:])
      if seen is not None:
        seen[path[-1]] = args[:4]
    out = next_fun(*args, **kwargs)
    if deltas is not None and isinstance(context.module, NarrativeMerge):
      out = out + deltas["merge"]
    if deltas is not None and isinstance(context.module, SpanHead):
      out = out + deltas["/".join(path)]
    if seen is not None and isinstance(context.module, HighlightGate):
      seen[path[-1]] = out[1]
    return out

  from tea_jax.model.tea import TEA  # pylint: disable=import-outside-toplevel
  with nn.intercept_methods(interceptor):
    return TEA(config).apply(variables, batch, train=False)


def embeddings_reference(config, variables, batch):
  """(V0, C0, Q0) of design sections 1, 2 and 9, float64, with the checkpoint's own tables."""
  p = to_torch(variables["params"])
  frozen = variables["frozen"]
  pe = torch.tensor(np.asarray(frozen["position"]["table"], np.float64))
  length, words = batch["video_mask"].shape[1], batch["query_mask"].shape[1]
  video = linear(to_torch(batch["video"]), p["video_projection"]["linear"])  # S
  narrative = linear(to_torch(batch["narrative"]), p["narrative_projection"]["linear"])  # C
  merged = merge_reference(config.merge, video, narrative, to_torch(batch["video_mask"]),
                           p.get("merge"), config.num_heads)
  table = np.concatenate([np.zeros((1, config.word_dim)),
                          np.asarray(variables["params"]["word_embedding"]["unk"], np.float64),
                          np.asarray(frozen["word_embedding"]["word_vectors"], np.float64)])
  query = linear(torch.tensor(table[batch["word_ids"]]), p["word_embedding"]["linear"])
  return merged + pe[:length], narrative + pe[:length], query + pe[:words]


def test_the_positional_table_is_the_sinusoid_of_section_1():
  np.testing.assert_allclose(positional_table(64, 16), sinusoid(64, 16), rtol=0, atol=2e-6)


def mixed(start_v, start_c, alpha):
  """Eq. 14 as implemented: (softmax(z_v) + alpha softmax(z_c)) / (1 + alpha) over snippets."""
  return (torch.softmax(start_v, -1) + alpha * torch.softmax(start_c, -1)) / (1.0 + alpha)


def iou(a0, a1, b0, b1):
  return max(min(a1, b1) - max(a0, b0), 0.0) / max(max(a1, b1) - min(a0, b0), 1e-5)


def pseudo_span_reference(out, s, e, threshold):
  """Section 10: the best-scored valid proposal [b0, b1 + 1) with IoU >= thr against [s, e + 1),
  else (s, e + 1)."""
  bounds, scores = np.asarray(out["proposal_bounds"]), np.asarray(out["proposal_scores"])
  valid = np.asarray(out["proposal_mask"])
  spans = []
  for b in range(len(s)):
    best = None
    for n in range(bounds.shape[1]):
      b0, b1 = float(bounds[b, n, 0]), float(bounds[b, n, 1]) + 1.0
      if valid[b, n] > 0 and iou(b0, b1, s[b], e[b] + 1.0) >= threshold:
        if best is None or scores[b, n] > scores[b, best]:
          best = n
    spans.append((s[b], e[b] + 1) if best is None else
                 (int(bounds[b, best, 0]), int(bounds[b, best, 1]) + 1))
  return spans


def vmr_reference(logits, spans, s, e, alpha):
  """L_vmr on the mixed distributions: mean_b -log sum_{min(s,ps)}^{max(s,ps)} p^s, likewise end."""
  p_start = mixed(logits["predictor/start_head"], logits["paragraph_predictor/start_head"], alpha)
  p_end = mixed(logits["predictor/end_head"], logits["paragraph_predictor/end_head"], alpha)
  total = 0.0
  for b, (ps, pe) in enumerate(spans):
    total = total - torch.log(p_start[b, min(s[b], ps):max(s[b], ps) + 1].sum()) / len(spans)
    total = total - torch.log(p_end[b, min(e[b], pe):max(e[b], pe) + 1].sum()) / len(spans)
  return total, p_start, p_end


HEADS = ("predictor/start_head", "predictor/end_head", "paragraph_predictor/start_head",
         "paragraph_predictor/end_head")
OUTPUT_LOGITS = dict(zip(HEADS, ("start_logits", "end_logits", "paragraph_start_logits",
                                 "paragraph_end_logits")))


def forward_and_gradients(config, experiment, variables, batch, threshold):
  """One compiled TEA forward and backward: (the frame encoders' inputs, the outputs, the loss
  parts, the parameters' gradients, the cotangents at the perturbation points)."""
  shapes = {"merge": batch["video"].shape[:2] + (config.hidden,),
            "paragraph_frames": batch["video"].shape[:2] + (config.hidden,)}
  shapes.update({head: batch["video_mask"].shape for head in HEADS})
  zeros = {k: jnp.zeros(shape, jnp.float32) for k, shape in shapes.items()}

  def loss_fn(params, deltas):
    seen = {}
    out = apply_tea(config, {"params": params, "frozen": variables["frozen"]}, batch, deltas,
                    seen)
    total, parts = losses.total_loss(experiment, out, batch, threshold)
    return total, (seen, out, parts)

  (_, (seen, out, parts)), (grads, cotangents) = jax.jit(jax.value_and_grad(
      loss_fn, argnums=(0, 1), has_aux=True))(variables["params"], zeros)
  return seen, out, parts, grads, cotangents


def check_encoder_inputs(config, variables, batch, seen):
  """Eq. 4 (V0 = merge(S, C) + pe) into the video branch, Eq. 12 (C0 = C + pe, the shared
  projection) into the paragraph branch, and the shared query Q0 into both."""
  v0, c0, q0 = (x.numpy() for x in embeddings_reference(config, variables, batch))
  for branch, frames_want in (("video_encoder", v0), ("paragraph_encoder", c0)):
    frames, query, frame_mask, query_mask = seen[branch]
    assert_close(frames, frames_want, what=f"{branch} frames")
    assert_close(query, q0, what=f"{branch} query Q0")
    np.testing.assert_array_equal(frame_mask, batch["video_mask"])
    np.testing.assert_array_equal(query_mask, batch["query_mask"])


def check_highlight(out, seen):
  """The highlight (and so its loss) is the video branch's gate; the paragraph gate's is
  discarded (section 9)."""
  np.testing.assert_array_equal(out["highlight"], seen["gate"])
  assert np.abs(np.asarray(seen["paragraph_gate"]) - np.asarray(seen["gate"])).max() > 1e-3


@pytest.mark.parametrize("merge,alpha", [("concat", 0.5), ("add", 0.25), ("attention", 1.0)])
def test_tea_inputs_mixing_loss_and_gradients_match_the_reference(merge, alpha):
  config, experiment, variables, batch = tea_setup(merge, alpha)
  threshold = 0.5
  seen, out, parts, grads, cotangents = forward_and_gradients(config, experiment, variables,
                                                              batch, threshold)
  check_encoder_inputs(config, variables, batch, seen)
  check_highlight(out, seen)

  # Eq. 14 and the span loss, from the two branches' logits (float64 leaves for autograd).
  logits = {head: to_torch(out[OUTPUT_LOGITS[head]], True) for head in HEADS}
  s, e = [int(x) for x in batch["start_label"]], [int(x) for x in batch["end_label"]]
  spans = pseudo_span_reference(out, s, e, threshold)
  assert any(span != (s[b], e[b] + 1) for b, span in enumerate(spans))  # a proposal is chosen
  vmr, p_start, p_end = vmr_reference(logits, spans, s, e, alpha)
  assert_close(out["start_prob"], p_start.detach().numpy(), what="p^s")
  assert_close(out["end_prob"], p_end.detach().numpy(), what="p^e")
  assert_close(parts["vmr"], vmr.item(), what="L_vmr")
  vmr.backward()
  for head in HEADS:  # the loss's gradient with respect to each branch's logits
    assert_close(cotangents[head], logits[head].grad.numpy(), what=f"dL/d {head}")

  # The gradients of TEA's own parameters given the cotangents at the merge's output and at the
  # paragraph branch's input: chain rule through section 2's projections and merge by autograd.
  p = to_torch(variables["params"], True)
  video = linear(to_torch(batch["video"]), p["video_projection"]["linear"])
  narrative = linear(to_torch(batch["narrative"]), p["narrative_projection"]["linear"])
  merged = merge_reference(merge, video, narrative, to_torch(batch["video_mask"]), p.get("merge"),
                           config.num_heads)
  pulled = ((merged * to_torch(cotangents["merge"])).sum()
            + (narrative * to_torch(cotangents["paragraph_frames"])).sum())
  pulled.backward()
  names = ["video_projection", "narrative_projection"] + (["merge"] if merge != "add" else [])
  for name in names:
    for path, grad in jax.tree_util.tree_flatten_with_path(grads[name])[0]:
      node = p[name]
      for key in path:
        node = node[key.key]
      what = "/".join([name] + [k.key for k in path])
      check_gradient(grad, node.grad.numpy(), what)
