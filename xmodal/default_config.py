"""The embedded default experiment, and the schema every config is checked against.

`xmodal train` with no `--config` runs this file: a CLIP-style image/text model trained on
the procedurally generated `shapes` dataset (no network, about three minutes on 2 CPU
cores). Every key a config may set appears here with its default; `xmodal.config.validate`
rejects keys and types that are not in this file (tower sections are checked against
`tower_defaults(kind)` instead, since their names are the user's modality names).

Config files in `configs/` start from `get_config()` and change what they need:

    from xmodal import default_config
    def get_config(arg=None):
      config = default_config.get_config()
      config.loss.name = "sigmoid"
      return config
"""

import ml_collections

from xmodal.data import shapes

ConfigDict = ml_collections.ConfigDict


def _image_text_common() -> dict:
  """Fields the vit and text towers share (speed, architecture, head)."""
  return dict(
      # Speed (every transformer tower).
      remat="none",        # "none", "full" (recompute blocks in backward) or "dots" (keep matmuls)
      scan=False,          # nn.scan over blocks: params stacked under transformer/blocks
      # Architecture; the defaults are xmodal's own pre-LN towers.
      mlp_dim=0,           # MLP hidden units; 0 = mlp_ratio * width
      act="gelu_tanh",     # "gelu_tanh", "gelu" (exact), "quick_gelu" (OpenAI CLIP), "relu"
      norm_first=True,     # pre-LN blocks (CLIP, ViT); False = post-LN (BERT)
      pre_norm=False,      # LayerNorm after the embeddings (CLIP ViT ln_pre, BERT emb. LN)
      final_norm=True,     # LayerNorm after the last block
      layer_norm_eps=1e-6,
      # Projection to model.embed_dim after pooling.
      head="linear",       # "linear", "mlp" (2-layer projector) or "none" (width == embed_dim)
      head_bias=False,
      head_hidden=0,       # hidden units of the "mlp" head; 0 = width
  )


def vit_defaults() -> ConfigDict:
  """A ViT image tower (models/vit.py). Input: uint8 images [B, H, W, 3]."""
  return ConfigDict(dict(
      kind="vit",
      patch_size=8,
      width=96,
      depth=2,
      num_heads=4,
      mlp_ratio=4.0,
      pool="gap",          # "gap" (mean of patch tokens), "cls" (class token) or "map"
      variant="",          # "B/16", "L/14", ... sets width/depth/num_heads/mlp_dim/patch_size
      pos_embed="learned", # "learned", "sincos2d" (fixed) or "none"
      patch_dropout=0.0,   # FLIP: fraction of patch tokens dropped at train time
      norm_mean=(0.48145466, 0.4578275, 0.40821073),   # pixel normalisation (CLIP's)
      norm_std=(0.26862954, 0.26130258, 0.27577711),   # SigLIP: (0.5,)*3 and (0.5,)*3
      **_image_text_common(),
  ))


def text_defaults() -> ConfigDict:
  """A Transformer text tower (models/text.py). Input: int32 token ids [B, L] from the
  tokenizer: [prefix, text, EOS, PAD...]; the trailing run of its pad id is padding."""
  return ConfigDict(dict(
      kind="text",
      width=96,
      depth=2,
      num_heads=4,
      mlp_ratio=4.0,
      causal=True,         # CLIP-style causal mask; False = bidirectional
      pool="eot",          # "eot" (last real token: EOS), "argmax" (highest token id: CLIP
                           # BPE only), "last" (position L-1: SigLIP), "mean" (real
                           # tokens), "first" (position 0: [CLS] of a BERT tokenizer.json)
      vocab_size=0,        # 0 = the tokenizer's; else at least the tokenizer's
      context_length=0,    # position embeddings; 0 = data.context_length
      type_vocab_size=0,   # BERT token-type embeddings (type 0 is added); 0 = none
      **_image_text_common(),
  ))


def _transformer(**fields) -> ConfigDict:
  """Fields every transformer tower of models/modalities.py shares."""
  base = dict(width=96, depth=2, num_heads=4, mlp_ratio=4.0, mlp_dim=0, act="gelu_tanh",
              layer_norm_eps=1e-6, remat="none", scan=False, pool="gap",  # "gap"/"cls"/"map"
              head="linear", head_bias=False, head_hidden=0)
  base.update(fields)
  return ConfigDict(base)


def audio_defaults() -> ConfigDict:
  """Audio (models/modalities.py): log-mel [B, frames, n_mels] -> patch transformer."""
  return _transformer(kind="audio", frames=64, n_mels=32, patch_size=8,
                      sample_rate=16000, n_fft=400, hop=160)   # the numpy front end's settings


def video_defaults() -> ConfigDict:
  """Video: uint8 frames [B, frames, S, S, 3] (S = data.image_size) -> per-frame ViT ->
  temporal "mean" or "attention" (temporal_depth blocks)."""
  return _transformer(kind="video", frames=4, patch_size=8, temporal="mean", temporal_depth=1)


def volume_defaults() -> ConfigDict:
  """3-D volumes [B, slices, size, size] -> per-slice patch transformer -> MAP over slices."""
  return _transformer(kind="volume", slices=8, size=16, patch_size=8)


def vector_defaults() -> ConfigDict:
  """Vectors / tabular rows [B, features]: "mlp", "transformer" (a token per feature) or
  "identity" (cached features of a frozen encoder; pair with head="mlp")."""
  return _transformer(kind="vector", features=16, encoder="mlp")


def signal_defaults() -> ConfigDict:
  """1-D signals [B, length, channels] -> patches of patch_len steps -> transformer."""
  return _transformer(kind="signal", length=128, channels=1, patch_len=16)


TOWER_DEFAULTS = {"vit": vit_defaults, "text": text_defaults, "audio": audio_defaults,
                  "video": video_defaults, "volume": volume_defaults,
                  "vector": vector_defaults, "signal": signal_defaults}


def tower_defaults(kind: str) -> ConfigDict:
  """The schema (and defaults) of one tower kind."""
  if kind not in TOWER_DEFAULTS:
    raise ValueError(f"unknown tower kind {kind!r}; known: {sorted(TOWER_DEFAULTS)}")
  return TOWER_DEFAULTS[kind]()


def get_config(arg: str | None = None) -> ConfigDict:
  """The default experiment. `arg` is unused (kept for the `file.py:ARG` convention)."""
  del arg
  config = ConfigDict()
  config.seed = 0
  config.batch_size = 128            # global, over every device of every process

  # Mesh axes; -1 = all devices left over. Batch is split over data x fsdp.
  config.mesh = ConfigDict(dict(data=-1, fsdp=1, model=1))

  # Logical parameter axes -> mesh axes (None = replicated). See xmodal/sharding.py.
  config.sharding = ConfigDict(dict(rules=(
      ("batch", ("data", "fsdp")),     # activations' batch dimension
      ("embed", "fsdp"),               # model width: FSDP shards parameters over fsdp
      ("mlp", "model"),                # MLP hidden units: tensor parallel
      ("heads", "model"),              # attention q/k/v/out: tensor parallel
      ("vocab", "model"),
      ("proj", None), ("norm", None), ("length", None), ("act_embed", None),
      ("layers", None),                # the stacked-blocks axis of scanned towers
  )))

  # One tower per modality; the key is the modality name used in batches and outputs.
  config.towers = ConfigDict()
  config.towers.image = vit_defaults()
  config.towers.text = text_defaults()

  config.model = ConfigDict(dict(
      embed_dim=64,                    # shared embedding size after each tower's head
      compute_dtype="float32",         # "float32" or "bfloat16" (params stay float32)
  ))

  config.loss = ConfigDict(dict(
      name="softmax",                  # "softmax" (CLIP / InfoNCE) or "sigmoid" (SigLIP)
      impl="gathered",                 # "gathered" (sharded, all devices' negatives), "dense"
                                       # or "ring" (blocks passed around the devices, tiled)
      tile_size=256,                   # ring: columns scored per tile (any value; need not
                                       # divide the per-device batch); memory ~ b x tile_size
      pairs=(),                        # ("image:text", ...); empty = every pair of towers
      # Which rows are positives of each other: "pair" (each row's own pair only), "group"
      # (rows with the same batch["group"], i.e. the examples one record yields with
      # data.captions="all"; multi-positive targets) or "auto" ("group" when
      # data.captions="all", else "pair").
      positives="auto",
      init_scale=0.0,                  # 0 = loss default: 1/0.07 (softmax), 10 (sigmoid)
      init_bias=0.0,                   # sigmoid only; 0 = loss default -10
      max_scale=100.0,                 # the learned scale is clipped to this value
  ))

  config.data = ConfigDict(dict(
      # "shapes" (embedded), "manifest" (JSONL/CSV/Parquet rows), "webdataset" (tar
      # shards), "arrayrecord" (xmodal records), "tfds" (tfds.data_source) or "mixture".
      source="shapes",
      # Files of the train / eval split: brace patterns and/or globs, several separated by
      # ";", e.g. "/data/laion/{00000..00127}.tar" (webdataset, arrayrecord, manifest).
      train_files="",
      eval_files="",
      eval_source="",                  # kind of the eval split; "" = data.source (not mixture)
      train_manifest="",               # manifest source: same as train_files (older name)
      eval_manifest="",                # manifest source: same as eval_files (older name)
      # "mixture": "KIND:PATTERN@WEIGHT; ..." e.g. "webdataset:/d/a/{000..127}.tar@0.7;
      # arrayrecord:/d/b/*.arrayrecord@0.3" (tfds: PATTERN is the split).
      mixture="",
      tfds_name="",                    # tensorflow-datasets name, e.g. "coco_captions"
      tfds_data_dir="",                # "" = tfds default (~/tensorflow_datasets)
      tfds_train_split="train",        # tfds split strings, slicing allowed: "train[:90%]"
      tfds_eval_split="validation",
      tfds_keys="image=image,caption=caption",   # ROLE=FEATURE[/NESTED], roles image, caption, label
      image_key="image",               # manifest column holding the image path or bytes
      caption_key="caption",           # manifest column / webdataset json field: caption(s)
      label_key="label",               # manifest column / webdataset json field: class index
      captions="sample",               # several captions: "sample" one per use, "first", or
                                       # "all" (one training example per caption)
      image_size=32,
      flip=False,                      # random horizontal flip when training
      image_dtype="uint8",             # "uint8" (tower normalises on device) or "float32"
      normalize="none",                # float32 only: "none" ([0, 255]) or "clip" (mean/std)
      tokenizer="bytes",               # "bytes", "sentencepiece", "hf" or "clip"
      tokenizer_path="",               # the tokenizer's file (.model, tokenizer.json, bpe .gz)
      lowercase=False,                 # lowercase text before tokenizing
      context_length=48,               # tokens per caption, EOS included
      crop_scale=(0.8, 1.0),           # random resized crop: area fraction range
      crop_ratio=(0.75, 1.3333),       # random resized crop: aspect ratio range
      num_workers=0,                   # grain worker processes (0 = in the main process)
      read_threads=2,                  # decode threads per process (per worker)
      shapes_train_size=200_000,       # embedded dataset sizes
      shapes_eval_size=500,
      synthetic_classes=8,             # data.source="synthetic": latent classes of the pairs
      synthetic_train_size=100_000,
      synthetic_eval_size=256,
  ))

  config.optim = ConfigDict(dict(
      lr=2e-3,
      warmup_steps=60,
      end_lr_fraction=0.02,            # cosine decays to lr * this
      weight_decay=0.05,               # AdamW; off for norms, biases and the temperature
      b1=0.9,
      b2=0.98,
      eps=1e-6,
      grad_clip=1.0,                   # global-norm clipping; 0 = off
  ))

  config.train = ConfigDict(dict(
      total_steps=500,
      log_every=25,
      eval_every=250,                  # 0 = only at the end
      checkpoint_every=250,
      keep_checkpoints=2,
      # A step with a non-finite loss or gradient is skipped (no update, counted as
      # train/skipped_steps); this many in a row stop the run with the likely causes.
      max_nonfinite_steps=20,
      microbatches=1,                  # >1: GradCache, K micro-batches per device shard, same
                                       # gradient with one micro-batch's activations alive
      # LiT / partial fine-tuning: regexes over flattened param names ("image/encoder/...");
      # matching params get no updates (and no weight decay). Each must match something.
      frozen=(),                       # e.g. ("image/.*",) locks the image tower (LiT)
      unfrozen=(),                     # exceptions to `frozen`, e.g. ("image/head/.*",)
  ))

  # Initialise params (all, or a subtree) from converted weights or another run, at step 0.
  config.init = ConfigDict({
      "from": "",                      # .safetensors from tools/convert_weights.py, or a workdir
      "map": (),                       # ((dst_regex, src_template), ...); empty = same names
  })

  config.eval = ConfigDict(dict(
      batch_size=256,
      classnames="",                   # manifest zero-shot: text file, one class a line
      # "{}" = class name; the default's prompts follow the embedded dataset's captions.
      templates=shapes.prompt_templates(),
  ))
  return config
