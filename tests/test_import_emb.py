"""The EMB checkpoint importer on a random state_dict in the documented layout.

Independent checks: torch's own conv1d / conv2d / LSTM (packed sequences) run on the PyTorch-layout
weights and must equal our modules running on the imported weights.
"""

import json
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest
import torch
from conftest import REPO

from data_prep.annotations import read_durations
from tea_apps import predict
from tea_jax import import_emb, inference
from tea_jax.data.schema import records_dir
from tea_jax.errors import InputError
from tea_jax.model.bilstm import BiLSTM
from tea_jax.model.config import ModelConfig
from tea_jax.model.embeddings import Projection
from tea_jax.model.guides import GuideConv
from tea_jax.model.ranker import Ranker

LAYOUT = REPO / "tests" / "data" / "emb_state_dict.txt"


def documented_layout():
  """(key, shape) pairs of tests/data/emb_state_dict.txt (a copy of shared/spec's file)."""
  rows = []
  for line in LAYOUT.read_text().splitlines():
    if line.startswith("#") or not line.strip():
      continue
    key, rest = line.split(" ", 1)
    shape = tuple(int(s) for s in rest[rest.index("(") + 1:rest.index(")")].split(",") if s.strip())
    rows.append((key, shape))
  return rows


def random_state_dict(seed=0):
  rng = np.random.default_rng(seed)
  sd = {k: (rng.normal(size=s) * 0.1).astype(np.float32) for k, s in documented_layout()}
  sd["embedding_net.word_emb.pad_vec"][:] = 0
  return sd


@pytest.fixture(scope="module")
def imported():
  sd = random_state_dict()
  config, variables = import_emb.convert_state_dict(sd)
  return sd, config, variables


def test_every_documented_key_is_mapped_or_ignored(imported):
  sd, config, _ = imported
  rules = import_emb.emb_rules()
  ignored = [k for k in sd if k.startswith(import_emb.IGNORED_PREFIXES)]
  assert len(ignored) == 9  # the character CNN: its embedding table and 4 convs (weight, bias)
  assert set(sd) == set(rules) | set(ignored) | {"embedding_net.word_emb.pad_vec"}
  assert config.vocab_size == 2 + 998 and config.hidden == 128 and config.content_kernel == 7


def test_converted_values_by_hand(imported):
  sd, _, v = imported
  p = v["params"]
  w = sd["video_affine.linear.conv1d.weight"]
  assert p["video_projection"]["linear"]["kernel"][5, 7] == w[7, 5, 0]
  dw = sd["encoder.f2w.layers.0.guide.conv_layers.0.weight"]
  assert p["video_encoder"]["f2w"]["guided"]["guide"]["depthwise"][3, 2, 9] == dw[9, 0, 3, 2]
  lstm = sd["predictor.end_encoder.rnn.weight_hh_l0_reverse"]
  assert p["predictor"]["end_encoder"]["rnn"]["backward_w_hh"][4, 300] == lstm[300, 4]
  assert np.array_equal(v["frozen"]["word_embedding"]["word_vectors"],
                        sd["embedding_net.word_emb.glove_vec"])
  assert np.array_equal(p["proposal_fusion"]["w_m"], sd["fuser2.cq_attention.w4mlu"][0, 0])


def test_projection_matches_torch_conv1d(imported, rng):
  sd, _, v = imported
  x = rng.normal(size=(2, 5, 1024)).astype(np.float32)
  ours = Projection(ModelConfig()).apply({"params": v["params"]["video_projection"]}, x, train=False)
  ref = torch.nn.functional.conv1d(torch.from_numpy(x).transpose(1, 2),
                                   torch.from_numpy(sd["video_affine.linear.conv1d.weight"]),
                                   torch.from_numpy(sd["video_affine.linear.conv1d.bias"]))
  np.testing.assert_allclose(np.asarray(ours), ref.transpose(1, 2).numpy(), atol=1e-4)


def test_guide_conv_matches_torch_depthwise_conv2d(imported, rng):
  sd, _, v = imported
  prefix = "encoder.v2v.layers.0.guide."
  left, right, x = (rng.normal(size=(2, 9, 128)).astype(np.float32) for _ in range(3))
  guide = v["params"]["video_encoder"]["v2v"]["guided"]["guide"]
  ours = GuideConv(ModelConfig(), 7).apply({"params": guide}, left, right, x, train=False)
  stack = torch.from_numpy(np.stack([left, right, x], -1)).permute(0, 2, 1, 3)  # (B, D, L, 3)
  t = lambda k: torch.from_numpy(sd[prefix + k])
  y = torch.nn.functional.conv2d(stack, t("conv_layers.0.weight"), padding=(3, 0), groups=128)
  y = torch.nn.functional.conv2d(y, t("conv_layers.1.weight"), t("conv_layers.1.bias"))
  y = y[..., 0].transpose(1, 2)
  y = torch.relu(torch.nn.functional.layer_norm(y, (128,), t("layer_norm.weight"),
                                                t("layer_norm.bias"), 1e-6))
  np.testing.assert_allclose(np.asarray(ours), y.numpy(), atol=1e-4)


def test_bilstm_matches_torch_packed_lstm(imported, rng):
  sd, _, v = imported
  lengths = [6, 2, 4]
  x = rng.normal(size=(3, 6, 128)).astype(np.float32)
  mask = (np.arange(6)[None] < np.array(lengths)[:, None]).astype(np.float32)
  rnn = v["params"]["predictor"]["start_encoder"]["rnn"]
  ours = np.asarray(BiLSTM(128).apply({"params": rnn}, x, mask))
  lstm = torch.nn.LSTM(128, 128, batch_first=True, bidirectional=True)
  prefix = "predictor.start_encoder.rnn."
  lstm.load_state_dict({k[len(prefix):]: torch.from_numpy(val) for k, val in sd.items()
                        if k.startswith(prefix)})
  packed = torch.nn.utils.rnn.pack_padded_sequence(torch.from_numpy(x), torch.tensor(lengths),
                                                   batch_first=True, enforce_sorted=False)
  with torch.no_grad():
    out, _ = lstm(packed)
  ref, _ = torch.nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=6)
  np.testing.assert_allclose(ours, ref.numpy(), atol=1e-5)


def test_ranker_matches_torch_conv2d(imported, rng):
  sd, _, v = imported
  n = 4
  feats = rng.normal(size=(1, n * n, 128)).astype(np.float32)
  mask = np.ones((1, n * n), np.float32)
  ours = np.asarray(Ranker(ModelConfig()).apply({"params": v["params"]["ranker"]}, feats, mask))
  x = torch.from_numpy(feats.reshape(1, n, n, 128)).permute(0, 3, 1, 2)
  t = lambda k: torch.from_numpy(sd[k])
  y = torch.relu(torch.nn.functional.conv2d(x, t("ranker.encoders.0.weight"),
                                            t("ranker.encoders.0.bias"), padding=1))
  count = torch.nn.functional.conv2d(torch.ones(1, 1, n, n), torch.ones(1, 1, 3, 3), padding=1)
  y = y / count
  ref = torch.sigmoid(torch.nn.functional.conv2d(y, t("ranker.predictor.weight"),
                                                 t("ranker.predictor.bias")))
  np.testing.assert_allclose(ours, ref.reshape(1, -1).numpy(), atol=1e-5)


def test_missing_unknown_and_misshaped_keys_are_named():
  sd = random_state_dict()
  missing = dict(sd)
  del missing["encoder.s2s.layers.0.norm2.bias"]
  with pytest.raises(InputError, match="encoder.s2s.layers.0.norm2.bias"):
    import_emb.convert_state_dict(missing)
  unknown = dict(sd, **{"encoder.extra.weight": np.zeros(3, np.float32)})
  with pytest.raises(InputError, match="encoder.extra.weight"):
    import_emb.convert_state_dict(unknown)
  bad = dict(sd)
  bad["fuser1.cq_attention.cqa_linear.conv1d.weight"] = np.zeros((128, 500, 1), np.float32)
  with pytest.raises(ValueError, match="fuser1.cq_attention.cqa_linear.conv1d.weight"):
    import_emb.convert_state_dict(bad)


def test_command_line_import_round_trip(tmp_path):
  sd = random_state_dict(seed=1)
  ckpt = tmp_path / "model_best.pth.tar"
  torch.save({"epoch": 3, "step": 10, "state_dict": {k: torch.from_numpy(x) for k, x in sd.items()}},
             ckpt)
  workdir = tmp_path / "imported"
  proc = subprocess.run([sys.executable, "-m", "tea_jax.import_emb", "--checkpoint", str(ckpt),
                         "--workdir", str(workdir)], cwd=REPO, capture_output=True, text=True,
                        check=False)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert (workdir / "vocab.json").exists() and (workdir / "config.json").exists()
  config, params = inference.load_variables(str(workdir))
  direct_config, direct = import_emb.load(str(ckpt))
  assert config.model.to_dict() == direct_config.model.to_dict()
  flat = jax.tree_util.tree_leaves_with_path(params)
  direct_flat = dict(jax.tree_util.tree_leaves_with_path(direct))
  assert len(flat) == len(direct_flat)
  for path, leaf in flat:
    np.testing.assert_array_equal(np.asarray(leaf), direct_flat[path])


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
  bad = tmp_path / "model_best.pth.tar"
  bad.write_bytes(b"not a checkpoint")
  with pytest.raises(ValueError, match="model_best.pth.tar"):
    import_emb.load(str(bad))
  with pytest.raises(FileNotFoundError, match="missing.pth"):
    import_emb.load(str(tmp_path / "missing.pth"))


def test_main_eval_and_predict_on_an_imported_workdir(tmp_path, capsys):
  """import_emb -> `tea_jax.main --mode eval` on records of the same vocabulary, and
  `tea_apps.predict` on the raw files of one test pair gives the moment evaluation gave."""
  from configs import demo
  from data_prep import synthetic
  from data_prep.build_records import build_records
  root = tmp_path / "data"
  synthetic.generate(str(root), videos=12, seed=2, video_dim=1024, word_dim=300)
  config = demo.get_config()
  config.unlock()
  config.data.root = str(root)
  config.model.update(video_dim=1024, word_dim=300, narrative_dim=300)
  meta = build_records(config, progress=False)
  sd = random_state_dict(seed=3)
  sd["embedding_net.word_emb.glove_vec"] = np.random.default_rng(0).normal(
      size=(meta["vocab_size"] - 2, 300)).astype(np.float32)
  ckpt = tmp_path / "model_best.pth.tar"
  torch.save({"state_dict": {k: torch.from_numpy(x) for k, x in sd.items()}}, ckpt)
  workdir = tmp_path / "emb"
  words = json.loads((pathlib.Path(records_dir(config.data)) / "vocab.json").read_text())
  (tmp_path / "words.txt").write_text("\n".join(words[2:]) + "\n")
  import_emb.write_workdir(str(ckpt), str(workdir), words_file=str(tmp_path / "words.txt"))
  proc = subprocess.run([sys.executable, "-m", "tea_jax.main", "--config", "configs/demo.py",
                         f"--config.data.root={root}", "--config.data.eval_splits=('test',)",
                         "--workdir", str(workdir), "--mode", "eval"], cwd=REPO,
                        capture_output=True, text=True, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  metrics = json.loads((workdir / "metrics.json").read_text())
  assert metrics["step"] == 0 and metrics["splits"]["test"]["count"] == meta["splits"]["test"]["pairs"]
  first = json.loads((workdir / "predictions_test.jsonl").read_text().splitlines()[0])
  duration = read_durations(str(root / "charades.json"))[first["video_id"]]
  capsys.readouterr()
  assert predict.main(["--workdir", str(workdir), "--features", str(root / "features"),
                       "--video-id", first["video_id"], "--duration", str(duration),
                       "--query", first["query"]]) == 0
  moment = json.loads(capsys.readouterr().out.strip())["moments"][0]
  assert moment["start"] == pytest.approx(first["pred_start"], abs=1e-3)
  assert moment["end"] == pytest.approx(first["pred_end"], abs=1e-3)
