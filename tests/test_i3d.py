"""I3D in Flax: golden outputs of the PyTorch reference, the checkpoint importer, the recipe pieces
against hand-worked cases, and 24 fps decoding against libavfilter's own fps filter.

The golden case (../shared/spec/golden_i3d) holds outputs of piergiaj/pytorch-i3d's module for
weights made by a documented numpy rule; the rule is rerun here and checked by sha256."""

import hashlib
import json
import subprocess
import sys
from fractions import Fraction

import av
import jax
import numpy as np
import pytest
import torch
from conftest import REPO, shared_path

from data_prep.frames import UnreadableVideo, frames_at_fps
from data_prep.testing.videos import frame_index, write_indexed_video
from tea_jax.errors import InputError
from tea_jax.i3d import convert, importer, recipe
from tea_jax.i3d.extractor import Extractor
from tea_jax.i3d.model import InceptionI3d, Unit3D

GOLDEN = ("spec", "golden_i3d")


def sha256(array: np.ndarray) -> str:
  return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def layout_file_shapes() -> dict:
  """{key: shape} of the golden folder's state_dict.txt (the public module's state_dict)."""
  shapes = {}
  for line in shared_path(*GOLDEN, "state_dict.txt").read_text().splitlines():
    if line.startswith("#") or not line.strip():
      continue
    key, rest = line.split()[1], line[line.index("("):line.index(")") + 1]
    shapes[key] = tuple(int(s) for s in rest.strip("()").split(",") if s.strip())
  return shapes


def rule_weights(shapes: dict) -> dict:
  """The golden case's weight rule: key k (in sorted order) draws default_rng(1000 + k)."""
  weights, f = {}, np.float32
  for k, key in enumerate(sorted(shapes)):
    shape = shapes[key]
    if key.endswith("num_batches_tracked"):
      weights[key] = np.zeros(shape, np.int64)
      continue
    z = np.random.default_rng(1000 + k).standard_normal(shape, dtype=np.float32)
    if key.endswith("conv3d.weight"):
      weights[key] = z * f(np.sqrt(2.0 / np.prod(shape[1:])))
    elif key.endswith("conv3d.bias"):
      weights[key] = z * f(0.1)
    elif key.endswith("bn.weight"):
      weights[key] = f(1) + f(0.1) * z
    elif key.endswith("bn.running_var"):
      weights[key] = f(1) + f(0.1) * np.abs(z)
    else:
      weights[key] = f(0.1) * z
  return weights


def random_state_dict(num_classes=400, seed=0) -> dict:
  """Random numpy weights in the public layout (no reference outputs: for the importer)."""
  rng = np.random.default_rng(seed)
  return {k: (np.zeros(s, np.int64) if k.endswith("num_batches_tracked")
              else rng.normal(size=s).astype(np.float32))
          for k, s in importer.public_layout(num_classes).items()}


def relative_error(ours: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
  """(max |ours - ref| / max |ref|, max |ours - ref|)."""
  diff = float(np.abs(ours - ref).max())
  return diff / float(np.abs(ref).max()), diff


def u8_input(seed, shape):
  """The golden input rule: uint8 pixels, (v / 255.) * 2 - 1 in float64, NCTHW -> NTHWC."""
  u8 = np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)
  return ((u8 / 255.) * 2 - 1).astype(np.float32).transpose(0, 2, 3, 4, 1)


# ---------------------------------------------------------------- golden case (needs ../shared)

@pytest.fixture(scope="module")
def manifest():
  return json.loads(shared_path(*GOLDEN, "manifest.json").read_text())


@pytest.fixture(scope="module")
def golden_weights():
  return rule_weights(layout_file_shapes())


@pytest.fixture(scope="module")
def golden_model(golden_weights):
  num_classes, variables = importer.convert_state_dict(golden_weights)
  return InceptionI3d(num_classes, precision="highest"), variables


def test_rule_weights_are_the_golden_ones(golden_weights, manifest):
  expected = manifest["weights"]["sha256_per_key"]
  assert len(golden_weights) == manifest["weights"]["n_keys"] == 344
  assert {k: sha256(v) for k, v in golden_weights.items()} == expected
  whole = hashlib.sha256()
  for key in sorted(golden_weights):
    whole.update(golden_weights[key].tobytes())
  assert whole.hexdigest() == manifest["weights"]["sha256_all_sorted"]


def test_public_layout_is_the_documented_state_dict():
  assert importer.public_layout(400) == layout_file_shapes()


@pytest.mark.parametrize("case,seed", [("main", 2001), ("extra", 2002)])
def test_features_match_pytorch_reference(golden_model, manifest, case, seed):
  model, variables = golden_model
  clips = u8_input(seed, tuple(manifest["inputs"][case]["shape"]))
  assert sha256(clips.transpose(0, 4, 1, 2, 3)) == manifest["inputs"][case]["sha256"]
  ours = np.asarray(jax.jit(lambda v, x: model.apply(v, x, method=model.features))(
      variables, clips))
  ref = np.load(shared_path(*GOLDEN, f"features_{case}.npy")).transpose(0, 2, 3, 4, 1)
  assert ours.shape == ref.shape
  rel, diff = relative_error(ours, ref)
  print(f"features_{case}: max abs diff {diff:.2e}, relative to max |ref| {rel:.2e}")
  assert rel <= 1e-4


def test_logits_head_matches_numpy(golden_model, golden_weights):
  model, variables = golden_model
  pooled = np.load(shared_path(*GOLDEN, "features_main.npy")).transpose(0, 2, 3, 4, 1)
  logits = np.asarray(model.apply(variables, pooled, method=lambda m, x: m.logits(x)))
  w = golden_weights["logits.conv3d.weight"][:, :, 0, 0, 0].astype(np.float64)  # (400, 1024)
  expected = pooled.astype(np.float64) @ w.T + golden_weights["logits.conv3d.bias"]
  np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)


def test_recipe_matches_vslnet_reference(golden_model, manifest):
  model, variables = golden_model
  spec = manifest["recipe"]
  video = np.random.default_rng(spec["video_seed"]).integers(
      0, 256, size=tuple(spec["video_shape"]), dtype=np.uint8)
  assert sha256(video) == spec["video_sha256"]
  assert list(recipe.crop_offsets(*video.shape[1:3])) == spec["crop_offsets_hw"]
  assert [list(b) for b in recipe.window_bounds(len(video))] == spec["windows_start_end_exclusive"]
  clip = recipe.prepare_clip(video)
  assert sha256(recipe.PIXEL_VALUES[clip]) == spec["cropped_scaled_clip_THWC_sha256"]
  extractor = Extractor(variables, model.num_classes, batch_size=3)
  ours = extractor.video_features(video)
  ref = np.load(shared_path(*GOLDEN, "recipe_features.npy"))
  assert ours.shape == ref.shape == (6, 1024) and ours.dtype == np.float32
  rel, diff = relative_error(ours, ref)
  print(f"recipe_features: max abs diff {diff:.2e}, relative to max |ref| {rel:.2e}")
  assert rel <= 1e-4


# ---------------------------------------------------------------- importer

def test_every_key_is_mapped_or_ignored():
  layout = importer.public_layout(400)
  rules = importer.i3d_rules()
  ignored = [k for k in layout if k.endswith(importer.IGNORED_SUFFIXES)]
  assert len(layout) == 344 and len(ignored) == 57 and len(rules) == 344 - 57
  assert set(layout) == set(rules) | set(ignored)
  num_classes, variables = importer.convert_state_dict(random_state_dict())
  flat = jax.tree_util.tree_leaves_with_path(variables)
  assert num_classes == 400 and len(flat) == len(rules)  # every variable filled once


def test_converted_values_by_hand():
  sd = random_state_dict()
  _, v = importer.convert_state_dict(sd)
  w = sd["Mixed_4c.b1b.conv3d.weight"]  # (224, 112, 3, 3, 3)
  assert v["params"]["Mixed_4c"]["b1b"]["conv3d"]["kernel"][2, 0, 1, 17, 200] == w[200, 17, 2, 0, 1]
  assert np.array_equal(v["batch_stats"]["Conv3d_2c_3x3"]["bn"]["var"],
                        sd["Conv3d_2c_3x3.bn.running_var"])
  assert np.array_equal(v["batch_stats"]["Mixed_5c"]["b3b"]["bn"]["mean"],
                        sd["Mixed_5c.b3b.bn.running_mean"])
  assert np.array_equal(v["params"]["Mixed_3b"]["b0"]["bn"]["scale"], sd["Mixed_3b.b0.bn.weight"])
  assert v["params"]["logits"]["conv3d"]["kernel"][0, 0, 0, 5, 9] == \
      sd["logits.conv3d.weight"][9, 5, 0, 0, 0]


def test_missing_unknown_and_misshaped_keys_are_named():
  sd = random_state_dict()
  missing = dict(sd)
  del missing["Mixed_4d.b2a.bn.running_var"]
  with pytest.raises(InputError, match="Mixed_4d.b2a.bn.running_var"):
    importer.convert_state_dict(missing)
  with pytest.raises(InputError, match="Mixed_4d.b9.conv3d.weight"):
    importer.convert_state_dict({**sd, "Mixed_4d.b9.conv3d.weight": np.zeros(1, np.float32)})
  misshaped = dict(sd)
  misshaped["Conv3d_2b_1x1.conv3d.weight"] = np.zeros((64, 64, 1, 1, 3), np.float32)
  with pytest.raises(ValueError, match=r"Conv3d_2b_1x1.conv3d.weight.*\(64, 64, 1, 1, 1\)"):
    importer.convert_state_dict(misshaped)
  with pytest.raises(InputError, match=r"missing I3D key .logits\.conv3d\.weight"):
    importer.convert_state_dict({k: v for k, v in sd.items() if not k.startswith("logits.")})


def test_400_and_157_classes_and_old_checkpoints_without_counters_load():
  for classes in (400, 157):
    sd = random_state_dict(classes)
    sd = {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}
    num_classes, v = importer.convert_state_dict(sd)
    assert num_classes == classes
    assert v["params"]["logits"]["conv3d"]["kernel"].shape == (1, 1, 1, 1024, classes)


def test_torch_file_round_trip_and_converted_npz(tmp_path):
  sd = random_state_dict(157, seed=3)
  path = tmp_path / "rgb_charades.pt"
  torch.save({k: torch.from_numpy(v) for k, v in sd.items()}, path)
  num_classes, from_torch = importer.load_weights(str(path))
  _, from_numpy = importer.convert_state_dict(sd)
  assert num_classes == 157
  assert jax.tree_util.tree_all(jax.tree_util.tree_map(np.array_equal, from_torch, from_numpy))
  npz = tmp_path / "rgb_charades.npz"
  assert convert.main([str(path), str(npz)]) == 0
  num_classes, from_npz = importer.load_weights(str(npz))
  assert num_classes == 157
  assert jax.tree_util.tree_all(jax.tree_util.tree_map(np.array_equal, from_npz, from_numpy))
  data = dict(np.load(npz))
  data["params/Mixed_3b/b0/bn/bias"] = np.zeros(3, np.float32)
  np.savez(tmp_path / "bad.npz", **data)
  with pytest.raises(ValueError, match="Mixed_3b/b0/bn/bias"):
    importer.load_weights(str(tmp_path / "bad.npz"))
  (tmp_path / "junk.pt").write_bytes(b"junk")
  with pytest.raises(ValueError, match="junk.pt"):
    importer.load_weights(str(tmp_path / "junk.pt"))


def test_library_and_npz_loading_do_not_import_torch(tmp_path):
  sd = random_state_dict(157, seed=4)
  num_classes, variables = importer.convert_state_dict(sd)
  importer.save_npz(str(tmp_path / "w.npz"), num_classes, variables)
  code = ("import sys; import tea_jax.i3d, tea_jax.i3d.extractor, tea_jax.i3d.convert; "
          f"tea_jax.i3d.Extractor.from_weights({str(tmp_path / 'w.npz')!r}); "
          "assert 'torch' not in sys.modules, 'torch was imported'")
  run = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                       check=False)
  assert run.returncode == 0, run.stderr


@pytest.mark.parametrize("shape,stride", [((1, 5, 9, 11, 3), 2), ((2, 4, 8, 7, 3), 1)])
def test_unit_matches_torch_pad_conv_batchnorm(shape, stride, rng):
  """One unit against torch: the PyTorch port's pad rule written out, F.conv3d, batch_norm."""
  kernel = (3, 7, 5)
  w = rng.normal(size=(6, 3) + kernel).astype(np.float32)
  bn = [rng.normal(size=6).astype(np.float32) for _ in range(3)] + \
       [1 + np.abs(rng.normal(size=6)).astype(np.float32)]
  x = rng.normal(size=shape).astype(np.float32)
  strides = (stride,) * 3
  pads = []
  for n, k in zip(shape[1:4], kernel):
    total = max(k - stride, 0) if n % stride == 0 else max(k - n % stride, 0)
    pads = [total // 2, total - total // 2] + pads  # F.pad lists the last axis first
  xt = torch.nn.functional.pad(torch.from_numpy(x).permute(0, 4, 1, 2, 3), pads)
  yt = torch.nn.functional.conv3d(xt, torch.from_numpy(w), stride=strides)
  yt = torch.nn.functional.batch_norm(yt, torch.from_numpy(bn[2]), torch.from_numpy(bn[3]),
                                      torch.from_numpy(bn[0]), torch.from_numpy(bn[1]),
                                      training=False, eps=1e-3).relu()
  variables = {"params": {"conv3d": {"kernel": w.transpose(2, 3, 4, 1, 0)},
                          "bn": {"scale": bn[0], "bias": bn[1]}},
               "batch_stats": {"bn": {"mean": bn[2], "var": bn[3]}}}
  ours = Unit3D(6, kernel, strides, precision="highest").apply(variables, x)
  np.testing.assert_allclose(ours, yt.permute(0, 2, 3, 4, 1).numpy(), rtol=1e-5, atol=1e-5)


def test_too_small_clips_are_refused():
  model = InceptionI3d(400)
  with pytest.raises(ValueError, match=r"\(16, 160, 160\).*H, W > 192"):
    jax.eval_shape(lambda x: model.init(jax.random.key(0), x),
                   jax.ShapeDtypeStruct((2, 16, 160, 160, 3), np.float32))


# ---------------------------------------------------------------- recipe, by hand

def test_crop_offsets_round_half_to_even():
  assert recipe.crop_offsets(259, 341) == (18, 58)  # 17.5 -> 18, 58.5 -> 58
  assert recipe.crop_offsets(224, 224) == (0, 0)
  assert recipe.crop_offsets(225, 227) == (0, 2)  # 0.5 -> 0, 1.5 -> 2
  with pytest.raises(ValueError, match="223x300"):
    recipe.crop_offsets(223, 300)


def test_windows_by_hand():
  assert recipe.window_bounds(60) == [(0, 24), (24, 48), (35, 59)]
  assert recipe.window_bounds(49) == [(0, 24), (24, 48), (24, 48)]  # 24k + 1: last one repeats
  assert recipe.window_bounds(48) == [(0, 24), (23, 47)]
  assert recipe.window_bounds(24) == [(0, 23)]  # N <= 24: one window of N - 1 frames
  assert recipe.window_bounds(10) == [(0, 9)]
  assert [recipe.rows_per_window(n) for n in (9, 16, 17, 24)] == [1, 1, 2, 2]
  recipe.check_length(10)
  for n in (0, 1, 9):
    with pytest.raises(ValueError, match="too short"):
      recipe.check_length(n)


def test_pixel_values_are_computed_in_float64():
  assert recipe.PIXEL_VALUES[0] == -1 and recipe.PIXEL_VALUES[255] == 1
  assert recipe.PIXEL_VALUES[51] == np.float32(-0.6)
  v = np.arange(256)
  in_float32 = v.astype(np.float32) / np.float32(255) * np.float32(2) - np.float32(1)
  assert int(np.sum(in_float32 != recipe.PIXEL_VALUES)) == 128  # as the golden manifest says


def test_resize_rule_by_hand():
  assert recipe.resize_scale(226, 500) is None and recipe.resize_scale(480, 640) is None
  assert recipe.resize_scale(113, 200) == 2.0
  assert recipe.resize_short_side(np.zeros((180, 320, 3), np.uint8)).shape == (226, 402, 3)
  assert recipe.resize_short_side(np.zeros((300, 100, 3), np.uint8)).shape == (678, 226, 3)
  frame = np.zeros((113, 120, 3), np.uint8)  # scale exactly 2
  frame[:2, :2, 0] = [[0, 100], [200, 50]]
  out = recipe.resize_short_side(frame)
  assert out.shape == (226, 240, 3)
  # Destination d samples source d / 2 - 0.25: x = 1 -> taps 0, 1 with weights 1536, 512 of 2048.
  # Rows: 0 * 1536 + 100 * 512 = 51200 and 200 * 1536 + 50 * 512 = 332800; OpenCV's vertical pass
  # ((1536 * (51200 >> 4)) >> 16) + ((512 * (332800 >> 4)) >> 16) = 75 + 162, (237 + 2) >> 2 = 59.
  assert out[1, 1, 0] == 59
  # Row 0 samples -0.25: both taps clip to row 0, x = 2 samples 0.75 -> 0 * 512 + 100 * 1536;
  # ((512 * 9600) >> 16) + ((1536 * 9600) >> 16) = 75 + 225, (300 + 2) >> 2 = 75.
  assert out[0, 2, 0] == 75
  assert out[0, 0, 0] == 0 and out[0, 0, 1] == 0  # x = 0 clamps to the first column


def test_resize_matches_opencv_when_installed(rng):
  cv2 = pytest.importorskip("cv2", reason="OpenCV is not a dependency; checked when installed")
  for height, width in [(180, 320), (240, 181), (37, 50)]:
    frame = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    scale = recipe.resize_scale(height, width)
    np.testing.assert_array_equal(recipe.resize_short_side(frame),
                                  cv2.resize(frame, dsize=(0, 0), fx=scale, fy=scale))


def test_prepare_clip_crops_every_frame():
  frames = np.random.default_rng(5).integers(0, 256, (3, 240, 300, 3), dtype=np.uint8)
  clip = recipe.prepare_clip(frames)
  assert clip.shape == (3, 224, 224, 3)
  np.testing.assert_array_equal(clip, frames[:, 8:232, 38:262])
  assert recipe.prepare_clip([]).shape == (0, 224, 224, 3)


# ---------------------------------------------------------------- 24 fps decoding

def test_frames_at_fps_by_hand(tmp_path):
  path = str(tmp_path / "ten.mp4")
  write_indexed_video(path, 10, fps=10)
  # Input frame i has tick round(2.4 i) = 0, 2, 5, 7, 10, 12, 14, 17, 19, 22; the video ends at
  # 1 s = tick 24; tick k shows the last frame whose tick is <= k.
  expected = [0, 0, 1, 1, 1, 2, 2, 3, 3, 3, 4, 4, 5, 5, 6, 6, 6, 7, 7, 8, 8, 8, 9, 9]
  assert [frame_index(f) for f in frames_at_fps(path)] == expected


def libavfilter_fps(path: str, fps: int = 24) -> list[int]:
  """Frame indices chosen by FFmpeg's own fps filter (through PyAV's filter graph)."""
  indices = []
  with av.open(path) as container:
    stream = container.streams.video[0]
    graph = av.filter.Graph()
    source, fps_filter, sink = (graph.add_buffer(template=stream), graph.add("fps", f"fps={fps}"),
                                graph.add("buffersink"))
    source.link_to(fps_filter)
    fps_filter.link_to(sink)
    graph.configure()

    def drain():
      while True:
        try:
          indices.append(frame_index(graph.pull().to_ndarray(format="rgb24")))
        except (av.BlockingIOError, av.EOFError):
          return
    for frame in container.decode(stream):
      graph.push(frame)
      drain()
    graph.push(None)
    drain()
  return indices


@pytest.mark.parametrize("num_frames,fps", [(40, Fraction(30000, 1001)), (50, 25), (90, 60),
                                            (33, 7)])
def test_frames_at_fps_equals_ffmpeg_fps_filter(tmp_path, num_frames, fps):
  path = str(tmp_path / "video.mp4")
  write_indexed_video(path, num_frames, fps=fps)
  ours = [frame_index(f) for f in frames_at_fps(path)]
  assert ours == libavfilter_fps(path)
  assert len(ours) == round(num_frames / fps * 24)


def test_frames_at_fps_names_a_corrupt_file(tmp_path):
  path = tmp_path / "broken.mp4"
  path.write_bytes(b"\x00not a video" * 50)
  with pytest.raises(UnreadableVideo, match="broken.mp4"):
    list(frames_at_fps(str(path)))
