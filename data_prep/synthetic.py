"""A small synthetic moment-retrieval benchmark written in the REAL input formats.

    python -m data_prep.synthetic --out demo_data [--videos 260 --seed 0] [--video-dim 1024] \
        [--write-videos] [--seconds 20 40] [--segments 2 4]

Writes, under --out:
  charades_sta_{train,val,test,test_ood,novel_word,novel_composition}.txt  `vid start end##sentence`
  charades.json            {vid: {"duration": seconds}}
  features/<vid>.npy       (T, video_dim) float32 snippet features, one per second
  glove.txt                GloVe-format word vectors (`word v1 ... vD`), including a malformed line
  narratives.jsonl         one line per video, as data_prep.narrate writes it
  videos/<vid>.mp4         with --write-videos: a small video per video id, its length the
                           annotated duration, each action segment drawn as a coloured card naming
                           the action (for the frame strip of `tea_apps.predict --plot --videos`)

The world: an action is a (verb, object) pair. A video is a sequence of 2-4 action segments over a
background (`--seconds` and `--segments` make longer videos with more actions, e.g. 60 120 and
6 12 for a model that must tell an action from many others). Snippet features carry a weak, noisy visual signature of the action on screen (verb and
object parts), so vision alone is ambiguous. Queries describe ONE segment with a small vocabulary
("person opens the door"). Narratives describe every second with more varied words (synonyms,
scene words), and some seconds are mislabelled: the text channel TEA adds is informative but noisy.
Word vectors give synonyms nearby vectors, as GloVe would.

Splits: `train`; `val` and `test` drawn like train; `test_ood`: moments placed where train never
puts them (train moments start in the first 60% of a video, ood moments in the last 40%);
`novel_word`: queries use verb synonyms that never occur in training queries but do occur in
training narratives; `novel_composition`: (verb, object) pairs never queried in training. Nothing
here is tuned to make TEA win: the same generator feeds EMB and TEA.
"""

import argparse
import colorsys
import json
import os

import numpy as np

from tea_jax import files

# verb -> synonyms used only by narratives (and by novel-word queries).
VERBS = {"open": ["unlock", "unseal"], "close": ["shut", "seal"], "hold": ["grip", "clutch"],
         "wash": ["rinse", "scrub"], "eat": ["munch", "devour"], "throw": ["toss", "hurl"],
         "fix": ["repair", "mend"], "watch": ["observe", "view"]}
OBJECTS = {"door": ["doorway", "entrance"], "window": ["pane", "glass"], "cup": ["mug", "tumbler"],
           "book": ["novel", "notebook"], "phone": ["smartphone", "cellphone"],
           "sandwich": ["snack", "bread"], "shoe": ["sneaker", "boot"], "box": ["carton", "crate"]}
SCENE_WORDS = ["kitchen", "bedroom", "hallway", "living", "room", "a", "man", "woman", "wearing",
               "red", "blue", "shirt", "near", "table", "standing", "in", "the", "is", "slowly",
               "quickly", "person", "while", "sitting", "light", "dark", "corner"]
# (verb, object) pairs never queried in training (novel-composition split).
HELD_OUT_PAIRS = {("open", "window"), ("wash", "shoe"), ("eat", "book"), ("fix", "cup"),
                  ("throw", "phone"), ("watch", "box")}


def third_person(verb: str) -> str:
  return verb + ("es" if verb.endswith(("sh", "ch", "x")) else "s")


def word_vectors(rng: np.random.Generator, dim: int) -> dict[str, np.ndarray]:
  """Synonyms share a base direction (cosine ~0.8), like GloVe neighbours."""
  vectors = {}
  for groups in (VERBS, OBJECTS):
    for head, synonyms in groups.items():
      base = rng.normal(size=dim)
      for word in [head] + synonyms:
        vectors[word] = base + 0.5 * rng.normal(size=dim)
      vectors[third_person(head)] = vectors[head] + 0.2 * rng.normal(size=dim)
      for syn in synonyms:
        vectors[third_person(syn)] = vectors[syn] + 0.2 * rng.normal(size=dim)
  for word in SCENE_WORDS + ["the", "a", ".", ",", "person", "then", "and", "someone"]:
    vectors.setdefault(word, rng.normal(size=dim))
  return {w: (v / np.linalg.norm(v)).astype(np.float32) for w, v in vectors.items()}


class World:
  """Visual signatures of verbs and objects in the snippet-feature space."""

  def __init__(self, rng: np.random.Generator, video_dim: int):
    self.rng = rng
    self.verb_sig = {v: rng.normal(size=video_dim) for v in VERBS}
    self.object_sig = {o: rng.normal(size=video_dim) for o in OBJECTS}
    self.video_dim = video_dim

  def features(self, duration: int, segments) -> np.ndarray:
    """(T = duration, D): background drift + weak action signatures + noise."""
    rng = self.rng
    t = duration
    steps = rng.normal(size=(t, self.video_dim)) * 0.3
    drift = np.cumsum(steps, axis=0) / np.sqrt(np.arange(1, t + 1))[:, None]
    feats = drift + rng.normal(size=(t, self.video_dim)) * 1.0
    for (verb, obj), start, end in segments:
      strength = rng.uniform(0.35, 0.7)
      feats[start:end] += strength * (self.verb_sig[verb] + self.object_sig[obj]) / np.sqrt(2)
    return feats.astype(np.float32)


def caption(rng: np.random.Generator, verb: str | None, obj: str | None) -> str:
  """A narrator-style caption of one second: synonyms and scene words, sometimes background."""
  scene = " ".join(rng.choice(SCENE_WORDS, size=rng.integers(3, 7)))
  if verb is None:
    room = rng.choice(["kitchen", "bedroom", "hallway"])
    return f"a person is standing in the {room} . {scene} ."
  v = rng.choice([verb] + VERBS[verb])
  o = rng.choice([obj] + OBJECTS[obj])
  return f"a person {third_person(v)} the {o} {scene} ."


def make_video(rng, world, split, seconds=(20, 40), segments=(2, 4)):
  """One video of `segments` (2-4) action segments (1-2 in `test_ood`); returns duration,
  features, narratives and segments.

  Segments start anywhere (only those starting in the first 60% are queried), except in
  `test_ood` videos where they all start in the last 40%. `novel_composition` videos contain at least one held-out (verb, object) pair,
  other videos none.
  """
  duration = int(rng.integers(seconds[0], seconds[1] + 1))
  late = split == "test_ood"
  n_seg = int(rng.integers(1, 3)) if late else int(rng.integers(segments[0], segments[1] + 1))
  actions = []
  if split == "novel_composition":
    held = sorted(HELD_OUT_PAIRS)
    actions += [held[i] for i in rng.choice(len(held), size=2, replace=False)]
  while len(actions) < n_seg:
    pair = (str(rng.choice(list(VERBS))), str(rng.choice(list(OBJECTS))))
    if pair not in HELD_OUT_PAIRS and pair not in actions:
      actions.append(pair)
  rng.shuffle(actions)
  # Non-overlapping segments (cut points in order), inside the allowed region.
  lo, hi = (int(np.ceil(0.6 * duration)), duration - 1) if late else (1, duration - 1)
  cuts = np.sort(rng.choice(np.arange(lo, hi), size=2 * n_seg, replace=False))
  spans = [(actions[k], int(cuts[2 * k]), int(cuts[2 * k + 1]) + 1) for k in range(n_seg)]
  feats = world.features(duration, spans)
  narratives = []
  for second in range(duration):
    active = [a for a, s, e in spans if s <= second < e]
    if rng.random() < 0.15:  # the narrator is wrong now and then
      active = [(str(rng.choice(list(VERBS))), str(rng.choice(list(OBJECTS))))]
    verb, obj = active[0] if active else (None, None)
    narratives.append({"t": float(second), "text": caption(rng, verb, obj)})
  return duration, feats, narratives, spans


def action_colour(verb: str, obj: str) -> tuple[int, int, int]:
  """A colour per (verb, object): the verb picks the hue, the object the brightness."""
  hue = sorted(VERBS).index(verb) / len(VERBS)
  value = 0.55 + 0.4 * sorted(OBJECTS).index(obj) / len(OBJECTS)
  return tuple(int(255 * c) for c in colorsys.hsv_to_rgb(hue, 0.6, value))


def write_video(path: str, duration: int, segments, fps: int = 4,
                size: tuple[int, int] = (160, 120)) -> None:
  """A video of `duration` seconds: grey background frames, and during each action segment a card
  of the action's colour naming it ("opens door"); the second is printed in a corner. Uses no
  random numbers, so writing videos leaves the rest of the benchmark unchanged."""
  import av  # pylint: disable=import-outside-toplevel
  from PIL import Image, ImageDraw, ImageFont  # pylint: disable=import-outside-toplevel
  font = ImageFont.load_default(size=max(10, size[1] // 8))
  with av.open(path, "w") as container:
    stream = container.add_stream("mpeg4", rate=fps)
    stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
    stream.bit_rate = 200_000  # legible text; still cards compress to a few kB per second
    for i in range(duration * fps):
      second = i / fps
      image = Image.new("RGB", size, (90, 90, 90))
      draw = ImageDraw.Draw(image)
      for (verb, obj), start, end in segments:
        if start <= second < end:
          draw.rectangle((8, 8, size[0] - 8, size[1] - 24), fill=action_colour(verb, obj))
          draw.text((size[0] // 2, size[1] // 2 - 8), f"{third_person(verb)}\n{obj}", fill="black",
                    font=font, anchor="mm", align="center")
      draw.text((4, size[1] - 4), f"{int(second)}s", fill="white", font=font, anchor="ld")
      frame = av.VideoFrame.from_ndarray(np.asarray(image), format="rgb24")
      for packet in stream.encode(frame):
        container.mux(packet)
    for packet in stream.encode():
      container.mux(packet)


def query_text(verb: str, obj: str, use_synonym: bool, rng) -> str:
  v = rng.choice(VERBS[verb]) if use_synonym else verb
  return f"person {third_person(v)} the {obj}."


def generate(out: str, videos: int = 260, seed: int = 0, video_dim: int = 256,
             word_dim: int = 50, seconds: tuple[int, int] = (20, 40),
             write_videos: bool = False, annotation_format: str = "sta",
             segments: tuple[int, int] = (2, 4)) -> dict:
  """Writes the benchmark (and with `write_videos` a video file per video); returns counts per
  split. The annotations are Charades-STA files (charades_sta_<split>.txt with charades.json) or,
  with annotation_format="jsonl", <split>.jsonl in the JSON-lines format of Moment-DETR (the
  format of configs/custom.py); the same pairs either way. `seconds` and `segments` bound each
  video's length and its number of actions (test_ood videos keep 1-2); the world's visual
  signatures depend on the seed and video_dim only, so longer videos with more actions
  (seconds=(60, 120), segments=(6, 12)) show the same actions as the demo's."""
  if annotation_format not in ("sta", "jsonl"):
    raise ValueError(f"annotation_format must be 'sta' or 'jsonl', got {annotation_format!r}")
  if not 1 <= segments[0] <= segments[1] or 2 * segments[1] > seconds[0] - 2:
    raise ValueError(f"segments {segments} must be 1 <= low <= high with 2 * high cut points "
                     f"inside the shortest video ({seconds[0]} s)")
  rng = np.random.default_rng(seed)
  world = World(rng, video_dim)
  os.makedirs(os.path.join(out, "features"), exist_ok=True)
  shares = {"train": 0.5, "val": 0.1, "test": 0.14, "test_ood": 0.1, "novel_word": 0.08,
            "novel_composition": 0.08}
  splits = {s: [] for s in shares}
  durations, narration_lines = {}, []
  plan = [split for split, share in shares.items() for _ in range(int(videos * share))]
  plan += ["train"] * (videos - len(plan))
  for n, split in enumerate(plan):
    vid = f"S{n:04d}"
    duration, feats, narratives, spans = make_video(rng, world, split, seconds, segments)
    np.save(os.path.join(out, "features", f"{vid}.npy"), feats)
    if write_videos:
      os.makedirs(os.path.join(out, "videos"), exist_ok=True)
      write_video(os.path.join(out, "videos", f"{vid}.mp4"), duration, spans)
    durations[vid] = {"duration": float(duration), "subset": split}
    narration_lines.append({"video_id": vid, "interval": 1.0, "narratives": narratives,
                            "model": "synthetic", "prompt": None})
    for (verb, obj), start, end in spans:
      if split == "novel_composition" and (verb, obj) not in HELD_OUT_PAIRS:
        continue
      if split != "test_ood" and start >= 0.6 * duration:
        continue
      text = query_text(verb, obj, split == "novel_word", rng)
      splits[split].append((vid, float(start), float(end), text, float(duration)))
  for split, pairs in splits.items():
    if annotation_format == "jsonl":
      lines = [json.dumps({"qid": f"{split}-{k}", "query": text, "vid": vid, "duration": d,
                           "relevant_windows": [[start, end]]})
               for k, (vid, start, end, text, d) in enumerate(pairs)]
      name = f"{split}.jsonl"
    else:
      lines = [f"{vid} {start:.1f} {end:.1f}##{text}" for vid, start, end, text, _ in pairs]
      name = f"charades_sta_{split}.txt"
    with open(os.path.join(out, name), "w", encoding="utf-8") as f:
      f.write("\n".join(lines) + "\n")
  with open(os.path.join(out, "charades.json"), "w", encoding="utf-8") as f:
    json.dump(durations, f)
  with open(os.path.join(out, "narratives.jsonl"), "w", encoding="utf-8") as f:
    for line in narration_lines:
      f.write(json.dumps(line) + "\n")
  vectors = word_vectors(rng, word_dim)
  with open(os.path.join(out, "glove.txt"), "w", encoding="utf-8") as f:
    for word, vec in vectors.items():
      f.write(word + " " + " ".join(f"{x:.5f}" for x in vec) + "\n")
    # GloVe 840B has lines whose "word" contains spaces; readers must skip them.
    f.write("at home " + " ".join("0.1" for _ in range(word_dim)) + "\n")
  return {s: len(v) for s, v in splits.items()}


def degrade_narratives(source: str, out: str, share: float = 0.4, seed: int = 0) -> int:
  """Writes a weaker narrator's copy of a narratives file: each caption is, with probability
  `share`, replaced by the caption of a second drawn at random in the same video (the same words,
  mostly placed where they do not belong). The demo's stand-in for a second narrator
  (tea-jax-paper table5 --demo); returns how many captions were moved."""
  rng = np.random.default_rng(seed)
  lines, moved = [], 0
  with open(source, encoding="utf-8") as f:
    for text in f:
      if not text.strip():
        continue
      line = json.loads(text)
      captions = [n["text"] for n in line["narratives"]]
      for item in line["narratives"]:
        if len(captions) > 1 and rng.random() < share:
          item["text"] = captions[int(rng.integers(len(captions)))]
          moved += 1
      lines.append(dict(line, model=f"{line.get('model')} (degraded: {share:g} of captions moved)"))
  files.write_lines(out, lines)
  return moved


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", required=True)
  parser.add_argument("--videos", type=int, default=260)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--video-dim", type=int, default=256)
  parser.add_argument("--word-dim", type=int, default=50)
  parser.add_argument("--seconds", type=int, nargs=2, default=(20, 40), metavar=("MIN", "MAX"),
                      help="video lengths in seconds")
  parser.add_argument("--segments", type=int, nargs=2, default=(2, 4), metavar=("MIN", "MAX"),
                      help="action segments per video (test_ood videos keep 1-2)")
  parser.add_argument("--write-videos", action="store_true",
                      help="also write videos/<vid>.mp4 (frames for tea_apps.predict --plot)")
  parser.add_argument("--format", choices=("sta", "jsonl"), default="sta",
                      help="annotations as Charades-STA txt files (configs/demo.py) or as "
                           "<split>.jsonl in Moment-DETR's format (configs/custom.py)")
  args = parser.parse_args(argv)
  counts = generate(args.out, args.videos, args.seed, args.video_dim, args.word_dim,
                    tuple(args.seconds), args.write_videos, args.format, tuple(args.segments))
  print(json.dumps({"out": args.out, "pairs": counts}))


if __name__ == "__main__":
  main()
