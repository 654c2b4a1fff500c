"""Fields shared by every experiment config; dataset configs fill in `data` and may override."""

import ml_collections

from tea_jax.losses import loss_defaults
from tea_jax.model.config import model_defaults
from tea_jax.trainfree import trainfree_defaults


def data_config(root: str, splits: dict[str, str], train: str, selection: str,
                evaluate: tuple[str, ...]) -> ml_collections.ConfigDict:
  """Where the inputs are and how records are built. Paths are relative to the working directory
  unless absolute; `root` is prepended to every relative file name below it."""
  d = ml_collections.ConfigDict()
  # Folder holding the benchmark's files (annotations, features, vectors, narratives).
  d.root = root
  # Split name -> annotation file (relative to root). A ConfigDict gives its keys back sorted by
  # name, so the declared order is kept in split_order below.
  d.splits = dict(splits)
  # Split names in declared order: the vocabulary counts the words of the splits in this order,
  # train first (EMB: train, val, test; ties in frequency keep this order).
  d.split_order = tuple(splits)
  # Split to train on, split that selects the best checkpoint, splits evaluated.
  d.train_split = train
  d.selection_split = selection
  d.eval_splits = tuple(evaluate)
  # charades.json-style durations (needed by Charades-STA txt files; "" when not needed).
  d.durations = ""
  # Snippet features: a folder of <video_id>.npy (+ optional feature_shapes.json) or an .h5 file.
  d.features = "features"
  # Word vectors in GloVe text format (word v1 ... vD per line).
  d.word_vectors = "glove.840B.300d.txt"
  # Narration output (JSON lines, data_prep.narrate); "" for plain EMB records (zero narratives).
  d.narratives = "narratives.jsonl"
  # Most snippets per video after reduction (docs/design.md section 1) and most query words.
  d.max_snippets = 128
  d.max_words = 128
  # Reduction of videos longer than max_snippets: "max" (the TEA paper: "downsampled to 128 frames
  # at most by max-pooling") or "mean" (EMB's code); each variant sets its own (VARIANTS below).
  d.pooling = "max"
  # Output folder of the TFRecords and meta.json. It follows the pooling (records_max,
  # records_mean: a lazy reference, overrides of pooling move it too), so that records pooled one
  # way are never read by a run that pools the other way.
  d.records_dir = "records_" + d.get_ref("pooling")
  # What to do with an annotation record EMB keeps although it is wrong (start > end, or a moment
  # outside its video): "reference" keeps it as EMB does (labels (0, 0), IoU 0) and reports it,
  # "skip" reports and skips it, "fail" stops at the first one. Published numbers use "reference".
  d.bad_records = "reference"
  # TFRecord shards per split (train is read in parallel from its shards).
  d.num_shards = 4
  # Training examples held in the shuffle buffer (serialized; an epoch also shuffles shard order).
  d.shuffle_buffer = 4096
  # Fail on the first bad annotation record / missing feature instead of reporting and skipping
  # (implies bad_records = "fail").
  d.strict = False
  # A video of an evaluation split (any split but train_split) without features, or without
  # narratives for a model that reads them: "fail" stops the build naming them, so that every
  # annotated pair is evaluated; "zeros" gives missing narratives zero rows (features must exist);
  # "skip" leaves their pairs out (the metrics then say how many pairs were evaluated). Training
  # videos without them are skipped and reported whatever this says.
  d.missing = "fail"
  # Padded lengths of batches: 0 = automatic (longest in the records, rounded up to 8).
  d.pad_snippets = 0
  d.pad_words = 0
  return d


def base_config() -> ml_collections.ConfigDict:
  """Defaults of docs/design.md section 0 for everything but the data."""
  c = ml_collections.ConfigDict()
  # Seed of parameter init, dropout and data order.
  c.seed = 0
  # Samples per training step (global, over all devices).
  c.batch_size = 16
  # Samples per evaluation step.
  c.eval_batch_size = 32
  # Training epochs.
  c.num_epochs = 100
  c.model = model_defaults()
  c.loss = loss_defaults()
  # The train-free retriever's segment search (variant "trainfree"; tea_jax/trainfree.py,
  # docs/design.md section 21): threshold (normalised relevance at or below it is irrelevant),
  # window_fraction (window lengths are multiples of this share of the video), max_fraction
  # (longest window, share of the video), rise_threshold and sigma (the smoothed rise that moves
  # a start back), nms_iou (windows overlapping a better one by more are dropped); glove_weight,
  # text_weight, frames_weight (weights of the relevance curves) and scores (the file of the text
  # and frame curves, relative to data.root; python -m tea_apps.trainfree_scores writes it).
  c.trainfree = trainfree_defaults()
  c.optimizer = ml_collections.ConfigDict()
  # Peak learning rate, decayed linearly to 0 over all steps.
  c.optimizer.learning_rate = 5e-4
  # Decoupled weight decay (AdamW) on the decayed parameter groups.
  c.optimizer.weight_decay = 0.01
  # Adam moments and epsilon (added to the uncorrected sqrt(v), as transformers-4.11's AdamW).
  c.optimizer.b1 = 0.9
  c.optimizer.b2 = 0.999
  c.optimizer.eps = 1e-6
  # Global gradient-norm clipping threshold.
  c.optimizer.clip_norm = 1.0
  # Evaluate every this many epochs (and at the end).
  c.eval_every_epochs = 1
  # Metric that selects the best checkpoint on data.selection_split ("r1_sum_miou" = EMB's
  # R1@0.3 + R1@0.5 + R1@0.7 + mIoU).
  c.selection_metric = "r1_sum_miou"
  # Evaluation protocol. "val": the checkpoint is chosen on data.selection_split once per epoch
  # (every eval_every_epochs) and every eval split is reported for it. "reference": EMB's training
  # loop, which the paper's numbers come from: every eval split is evaluated every
  # steps_per_epoch // 2 steps and at each epoch end, and each split reports its own best
  # evaluation by R1@0.3 + R1@0.5 + R1@0.7 + mIoU (selected on the reported split: optimistic).
  c.protocol = "val"
  # Log training metrics every this many steps.
  c.log_every_steps = 50
  # Stop after this many steps (0 = train all epochs); a later run resumes to the end.
  c.max_steps = 0
  # Persistent compilation cache (tea_jax/compilation_cache.py): "" = JAX's own setting if any,
  # else `.jax_cache` beside the workdir; a folder; or "off".
  c.compilation_cache = ""
  # Call jax.distributed.initialize() first (multi-host runs); devices form one `data` mesh axis.
  c.distributed = False
  # Multi-host settings passed to jax.distributed.initialize when set; left empty, JAX detects them
  # (Slurm, Open MPI, Kubernetes, Cloud TPU, or the JAX_COORDINATOR_ADDRESS variable).
  c.coordinator_address = ""  # "host:port" of process 0
  c.num_processes = 0  # 0: detected
  c.process_id = -1  # -1: detected
  return c


# Ablations of the TEA paper (Fig. 3, Tables 4-5): `--config configs/<dataset>.py:<variant>`.
# Each is (model switches, snippet pooling): TEA's variants max-pool long videos as the TEA paper
# says; the EMB baseline averages them as EMB's code (visual_feature_sampling) does.
VARIANTS = {
    "tea": (dict(merge="concat", paragraph_branch=True), "max"),   # VN + PQ (the paper's model)
    "emb": (dict(merge="none", paragraph_branch=False), "mean"),   # the EMB baseline
    "vn": (dict(merge="concat", paragraph_branch=False), "max"),   # video-narrative merge only
    "pq": (dict(merge="none", paragraph_branch=True), "max"),      # paragraph-query branch only
    "vn_add": (dict(merge="add", paragraph_branch=True), "max"),   # VN + PQ, the other merges
    "vn_attention": (dict(merge="attention", paragraph_branch=True), "max"),
    # No training: the query's similarity to the narratives, searched for its best segment
    # (tea_jax/trainfree.py). It reads TEA's records (narratives, max-pooled), hence TEA's switches.
    "trainfree": (dict(merge="concat", paragraph_branch=True), "max"),
}


def apply_variant(c: ml_collections.ConfigDict, variant: str | None) -> ml_collections.ConfigDict:
  """Sets the model switches and pooling of a named ablation (default "tea"); both stay
  overridable (a pooling override also moves data.records_dir)."""
  variant = variant or "tea"
  if variant not in VARIANTS:
    raise ValueError(f"unknown variant {variant!r}: expected one of {sorted(VARIANTS)}")
  switches, pooling = VARIANTS[variant]
  c.model.update(switches)
  # Snippet pooling of the variant (data.records_dir follows it).
  c.data.pooling = pooling
  # Name of the ablation variant the model switches come from (see VARIANTS).
  c.variant = variant
  return c


def dataset_config(variant, root, splits, train, selection, evaluate, durations=""):
  """A locked experiment config for one benchmark."""
  c = base_config()
  # Inputs, splits and record settings of the benchmark (data_config above).
  c.data = data_config(root, splits, train, selection, evaluate)
  c.data.durations = durations
  apply_variant(c, variant)
  c.lock()
  return c
