"""The embedded default experiment, and the schema every config is checked against.

`xmodal train` with no `--config` runs this file: a CLIP-style image/text model trained on
the procedurally generated `shapes` dataset (no network, about three minutes on 2 CPU
cores). Every key a config may set is declared here once, as a `fields.Field` with its
default, allowed values or range and a one-line doc; `get_config()` is the defaults,
`xmodal.config.validate` checks any config against the declarations, and docs/config.md is
generated from them (`python -m xmodal.config_reference`). Tower sections are checked
against their kind's declarations (`TOWER_FIELDS`), since their names are the user's
modality names.

Config files in `configs/` start from `get_config()` and change what they need:

    from xmodal import default_config
    def get_config(arg=None):
      config = default_config.get_config()
      config.loss.name = "sigmoid"
      return config
"""

import ml_collections

from xmodal.data import shapes
from xmodal.fields import Field

ConfigDict = ml_collections.ConfigDict

_ACT = ("gelu_tanh", "gelu", "quick_gelu", "relu")


def _objectives() -> tuple:
  from xmodal.losses import objectives   # noqa: PLC0415 (the registry imports jax)
  return objectives.names()


# Every tower kind: another tower's batch input (a frozen teacher or reference tower that
# sees the student's inputs).
_INPUT = Field("", "read the batch input of this tower instead of one of its own (a frozen "
               "teacher or reference tower on the same inputs); '' = its own")
_REMAT = ("none", "full", "dots")
_POOL = ("gap", "cls", "map")


# ----------------------------------------------------------------------------- towers

def _transformer_fields(pool=("gap", _POOL)) -> dict:
  """Fields every transformer tower shares: size, speed, head."""
  return dict(
      width=Field(96, "model width (token features)", gt=0),
      depth=Field(2, "transformer blocks", gt=0),
      num_heads=Field(4, "attention heads (must divide width)", gt=0),
      mlp_ratio=Field(4.0, "MLP hidden units = mlp_ratio x width (unless mlp_dim)", gt=0),
      mlp_dim=Field(0, "MLP hidden units; 0 = mlp_ratio x width", ge=0),
      act=Field("gelu_tanh", "MLP activation ('quick_gelu' is OpenAI CLIP's)", choices=_ACT),
      layer_norm_eps=Field(1e-6, "LayerNorm epsilon", gt=0),
      remat=Field("none", "recompute in backward: 'full' (whole blocks), 'dots' (keep "
                  "matmuls) or 'none'", choices=_REMAT),
      scan=Field(False, "nn.scan over blocks (params stacked under transformer/blocks)"),
      pool=Field(pool[0], "pooling of the tokens: 'gap' (mean), 'cls' (class token) or "
                 "'map' (attention pooling)", choices=pool[1]),
      head=Field("linear", "projection to model.embed_dim: 'linear', 'mlp' (2-layer "
                 "projector) or 'none' (width == embed_dim)", choices=("linear", "mlp", "none")),
      head_bias=Field(False, "a bias in the head's last layer"),
      head_hidden=Field(0, "hidden units of the 'mlp' head; 0 = width", ge=0),
  )


def _image_text_fields() -> dict:
  """Fields the vit and text towers add: pre/post-LN layout (xmodal's towers are pre-LN;
  converted BERT towers are post-LN)."""
  return dict(
      norm_first=Field(True, "pre-LN blocks (CLIP, ViT); False = post-LN (BERT)"),
      pre_norm=Field(False, "LayerNorm after the embeddings (CLIP ViT ln_pre, BERT emb. LN)"),
      final_norm=Field(True, "LayerNorm after the last block"),
      # FILIP (losses/objectives/filip.py): token features beside the pooled embedding.
      tokens=Field(False, "also return token features: embeddings '<tower>:tokens' [B, T, "
                   "D] (unit rows) and '<tower>:mask' [B, T] (1 = a real token)"),
      token_dim=Field(0, "D of the token features: 0 = model.embed_dim through the pooled "
                      "head; else their own linear head of this size", ge=0),
  )


TOWER_FIELDS = {
    # A ViT image tower (models/vit.py). Input: uint8 images [B, H, W, 3].
    "vit": dict(
        kind=Field("vit", "tower kind"),
        input=_INPUT,
        **_transformer_fields(),
        **_image_text_fields(),
        patch_size=Field(8, "pixels per patch side (data.image_size must be a multiple)", gt=0),
        variant=Field("", "'B/16', 'L/14', ...: sets width/depth/num_heads/mlp_dim/"
                      "patch_size"),
        pos_embed=Field("learned", "position embeddings: 'learned', 'sincos2d' (fixed) or "
                        "'none'", choices=("learned", "sincos2d", "none")),
        patch_dropout=Field(0.0, "FLIP: fraction of patch tokens dropped at train time",
                            ge=0, lt=1),
        norm_mean=Field((0.48145466, 0.4578275, 0.40821073),
                        "pixel normalisation mean (CLIP's; SigLIP: (0.5,)*3)"),
        norm_std=Field((0.26862954, 0.26130258, 0.27577711),
                       "pixel normalisation std (CLIP's; SigLIP: (0.5,)*3)", gt=0),
    ),
    # A Transformer text tower (models/text.py). Input: int32 token ids [B, L] from the
    # tokenizer: [prefix, text, EOS, PAD...]; the trailing run of its pad id is padding.
    "text": dict(
        kind=Field("text", "tower kind"),
        input=_INPUT,
        **_transformer_fields(pool=(
            "eot", ("eot", "argmax", "last", "mean", "first"))),
        **_image_text_fields(),
        causal=Field(True, "CLIP-style causal attention mask; False = bidirectional"),
        vocab_size=Field(0, "token embeddings; 0 = the tokenizer's, else at least the "
                         "tokenizer's", ge=0),
        context_length=Field(0, "position embeddings; 0 = data.context_length, else at "
                             "least it", ge=0),
        type_vocab_size=Field(0, "BERT token-type embeddings (type 0 is added); 0 = none",
                              ge=0),
    ),
    # Audio (models/modalities.py): log-mel [B, frames, n_mels] -> patch transformer.
    "audio": dict(
        kind=Field("audio", "tower kind"),
        input=_INPUT,
        **_transformer_fields(),
        frames=Field(64, "log-mel frames per example", gt=0),
        n_mels=Field(32, "mel bands", gt=0),
        patch_size=Field(8, "spectrogram patch side (frames and bands)", gt=0),
        sample_rate=Field(16000, "waveform sample rate of the log-mel front end", gt=0),
        n_fft=Field(400, "FFT size of the log-mel front end", gt=0),
        hop=Field(160, "hop length of the log-mel front end", gt=0),
    ),
    # Video: uint8 frames [B, frames, S, S, 3] (S = data.image_size) -> per-frame ViT ->
    # temporal "mean" or "attention" (temporal_depth blocks).
    "video": dict(
        kind=Field("video", "tower kind"),
        input=_INPUT,
        **_transformer_fields(),
        frames=Field(4, "frames per clip", gt=0),
        patch_size=Field(8, "pixels per patch side", gt=0),
        temporal=Field("mean", "over frames: 'mean' or 'attention' (a temporal transformer)",
                       choices=("mean", "attention")),
        temporal_depth=Field(1, "blocks of the temporal transformer", gt=0),
    ),
    # 3-D volumes [B, slices, size, size] -> per-slice patch transformer -> MAP over slices.
    "volume": dict(
        kind=Field("volume", "tower kind"),
        input=_INPUT,
        **_transformer_fields(),
        slices=Field(8, "slices per volume", gt=0),
        size=Field(16, "slice side in voxels", gt=0),
        patch_size=Field(8, "voxels per patch side of a slice", gt=0),
    ),
    # Vectors / tabular rows [B, features].
    "vector": dict(
        kind=Field("vector", "tower kind"),
        input=_INPUT,
        **_transformer_fields(),
        features=Field(16, "input features per row", gt=0),
        encoder=Field("mlp", "'mlp' (residual MLP), 'transformer' (a token per feature) or "
                      "'identity' (cached features of a frozen encoder; pair with "
                      "head='mlp')", choices=("mlp", "transformer", "identity")),
    ),
    # 1-D signals [B, length, channels] -> patches of patch_len steps -> transformer.
    "signal": dict(
        kind=Field("signal", "tower kind"),
        input=_INPUT,
        **_transformer_fields(),
        length=Field(128, "time steps per example", gt=0),
        channels=Field(1, "channels (leads)", gt=0),
        patch_len=Field(16, "time steps per patch", gt=0),
    ),
}


def tower_kinds() -> tuple[str, ...]:
  return tuple(TOWER_FIELDS)


def tower_fields(kind: str) -> dict:
  """The declared fields of one tower kind."""
  if kind not in TOWER_FIELDS:
    raise ValueError(f"unknown tower kind {kind!r}; known: {sorted(TOWER_FIELDS)}")
  return TOWER_FIELDS[kind]


def tower_defaults(kind: str) -> ConfigDict:
  """The defaults of one tower kind, as a config section."""
  from xmodal import fields
  return fields.defaults(tower_fields(kind))


# Older spellings, kept for config files that call them.
def vit_defaults() -> ConfigDict:
  return tower_defaults("vit")


def text_defaults() -> ConfigDict:
  return tower_defaults("text")


# ----------------------------------------------------------------------------- the run

_SOURCES = ("shapes", "manifest", "webdataset", "arrayrecord", "tfds", "mixture",
            "synthetic", "features")

SCHEMA = dict(
    seed=Field(0, "seeds initialisation, data order and augmentation", ge=0),
    batch_size=Field(128, "global batch, over every device of every process", gt=0),
    # Mesh axes; -1 = all devices left over. The batch is split over data x fsdp.
    mesh=dict(
        data=Field(-1, "data-parallel axis size; -1 = the devices left over", ge=-1),
        fsdp=Field(1, "FSDP axis: splits the batch and shards parameters (sharding.rules)",
                   ge=-1),
        model=Field(1, "tensor-parallel axis size", ge=-1),
    ),
    sharding=dict(
        rules=Field((
            ("batch", ("data", "fsdp")),     # activations' batch dimension
            ("embed", "fsdp"),               # model width: FSDP shards parameters over fsdp
            ("mlp", "model"),                # MLP hidden units: tensor parallel
            ("heads", "model"),              # attention q/k/v/out: tensor parallel
            ("vocab", "model"),
            ("proj", None), ("norm", None), ("length", None), ("act_embed", None),
            ("layers", None),                # the stacked-blocks axis of scanned towers
        ), "logical parameter axes -> mesh axes (None = replicated); see xmodal/sharding.py"),
    ),
    model=dict(
        embed_dim=Field(64, "shared embedding size after each tower's head", gt=0),
        compute_dtype=Field("float32", "activations' dtype (params stay float32)",
                            choices=("float32", "bfloat16")),
    ),
    loss=dict(
        name=Field("softmax", "the objective when loss.terms is empty: one of "
                   "xmodal/losses/objectives (docs/objectives.md), with its defaults",
                   choices=_objectives),
        # Weighted terms keyed by name, each {objective, weight, pairs, scale, queue, and the
        # objective's options}: xmodal/losses/terms.py, docs/objectives.md.
        terms=Field({}, "weighted objective terms keyed by name; empty = the one term "
                    "loss.name over loss.pairs (docs/objectives.md)"),
        impl=Field("gathered", "'gathered' (sharded, all devices' negatives), 'dense' or "
                   "'ring' (blocks passed around the devices, tiled)",
                   choices=("dense", "gathered", "ring")),
        tile_size=Field(256, "ring and gathered: columns scored per tile (need not divide "
                        "the per-device batch); memory ~ b x tile_size", gt=0),
        pairs=Field((), "('a:b', ...) tower pairs the loss sums over; empty = every pair"),
        positives=Field("auto", "which rows are positives: 'pair' (own pair only), 'group' "
                        "(rows with equal batch['group']: the examples one record yields with "
                        "data.captions='all') or 'auto' ('group' when captions='all')",
                        choices=("auto", "pair", "group")),
        init_scale=Field(0.0, "initial logit scale; 0 = the loss's default: 1/0.07 "
                         "(softmax), 10 (sigmoid)", ge=0),
        init_bias=Field(0.0, "sigmoid: initial logit bias; 0 = the default -10"),
        max_scale=Field(100.0, "the learned scale is clipped to this value", gt=0),
    ),
    data=dict(
        source=Field("shapes", "'shapes' (embedded), 'manifest' (JSONL/CSV/Parquet rows), "
                     "'webdataset' (tar shards), 'arrayrecord' (xmodal records), 'tfds' "
                     "(tfds.data_source), 'mixture', 'synthetic' or 'features'",
                     choices=_SOURCES),
        train_files=Field("", "files of the train split: brace patterns and/or globs, several "
                          "separated by ';', e.g. '/data/laion/{00000..00127}.tar'"),
        eval_files=Field("", "files of the eval split (same forms as train_files)"),
        eval_source=Field("", "kind of the eval split; '' = data.source (not mixture)",
                          choices=("",) + tuple(s for s in _SOURCES if s != "mixture")),
        train_manifest=Field("", "manifest source: same as train_files (older name)"),
        eval_manifest=Field("", "manifest source: same as eval_files (older name)"),
        mixture=Field("", "'KIND:PATTERN@WEIGHT; ...' e.g. 'webdataset:/d/a/{000..127}.tar@0.7; "
                      "arrayrecord:/d/b/*.arrayrecord@0.3' (tfds: PATTERN is the split)"),
        tfds_name=Field("", "tensorflow-datasets name, e.g. 'coco_captions'"),
        tfds_data_dir=Field("", "tfds data dir; '' = tfds default (~/tensorflow_datasets)"),
        tfds_train_split=Field("train", "tfds split string, slicing allowed: 'train[:90%]'"),
        tfds_eval_split=Field("validation", "tfds split string of the eval split"),
        tfds_keys=Field("image=image,caption=caption", "ROLE=FEATURE[/NESTED], roles image, "
                        "caption, label"),
        image_key=Field("image", "manifest column holding the image path or bytes"),
        caption_key=Field("caption", "manifest column / webdataset json field: caption(s)"),
        label_key=Field("label", "manifest column / webdataset json field: class index"),
        captions=Field("sample", "several captions: 'sample' one per use, 'first', 'all' "
                       "(one training example per caption) or 'k' (data.num_captions per "
                       "image, the image once: 1-to-K)",
                       choices=("sample", "first", "all", "k")),
        num_captions=Field(2, "captions='k': captions per image (sampled without repeats "
                           "while the record has enough)", gt=0),
        image_size=Field(32, "image side in pixels after cropping", gt=0),
        flip=Field(False, "random horizontal flip when training"),
        # SLIP / TCL / CleanCLIP intra-modal terms (losses/objectives/views.py).
        views=Field((), "('image',): towers whose training input also comes as a second, "
                    "independently augmented view (batch key '<tower>:view')"),
        image_dtype=Field("uint8", "'uint8' (the tower normalises on device) or 'float32'",
                          choices=("uint8", "float32")),
        normalize=Field("none", "float32 only: 'none' ([0, 255]) or 'clip' (mean/std)",
                        choices=("none", "clip")),
        tokenizer=Field("bytes", "'bytes', 'sentencepiece', 'hf' or 'clip'",
                        choices=("bytes", "sentencepiece", "hf", "clip")),
        tokenizer_path=Field("", "the tokenizer's file (.model, tokenizer.json, bpe .gz)"),
        lowercase=Field(False, "lowercase text before tokenizing"),
        context_length=Field(48, "tokens per caption, EOS included", gt=0),
        crop_scale=Field((0.8, 1.0), "random resized crop: area fraction range (low, high)",
                         gt=0, le=1),
        crop_ratio=Field((0.75, 1.3333), "random resized crop: aspect ratio range (low, high)",
                         gt=0),
        num_workers=Field(0, "grain worker processes (0 = in the main process)", ge=0),
        read_threads=Field(2, "decode threads per process (per worker)", gt=0),
        shapes_train_size=Field(200_000, "embedded dataset: training examples", gt=0),
        shapes_eval_size=Field(500, "embedded dataset: held-out examples", gt=0),
        synthetic_classes=Field(8, "data.source='synthetic': latent classes of the pairs", gt=0),
        synthetic_train_size=Field(100_000, "data.source='synthetic': training examples", gt=0),
        synthetic_eval_size=Field(256, "data.source='synthetic': held-out examples", gt=0),
    ),
    optim=dict(
        lr=Field(2e-3, "peak learning rate", gt=0),
        warmup_steps=Field(60, "linear warmup steps (below train.total_steps)", ge=0),
        end_lr_fraction=Field(0.02, "cosine decays to lr x this", ge=0, le=1),
        weight_decay=Field(0.05, "AdamW decay; off for norms, biases and the temperature",
                           ge=0),
        b1=Field(0.9, "Adam first-moment decay", ge=0, lt=1),
        b2=Field(0.98, "Adam second-moment decay", ge=0, lt=1),
        eps=Field(1e-6, "Adam epsilon", ge=0),
        grad_clip=Field(1.0, "global-norm clipping; 0 = off", ge=0),
    ),
    train=dict(
        total_steps=Field(500, "optimizer steps", gt=0),
        log_every=Field(25, "steps between log lines", gt=0),
        eval_every=Field(250, "steps between evaluations; 0 = only at the end", ge=0),
        checkpoint_every=Field(250, "steps between checkpoints", gt=0),
        keep_checkpoints=Field(2, "newest checkpoints kept", gt=0),
        microbatches=Field(1, ">1: GradCache, K micro-batches per device shard, the same "
                           "gradient with one micro-batch's activations alive", gt=0),
        # LiT / partial fine-tuning: regexes over flattened param names.
        frozen=Field((), "regexes over param names ('image/.*' locks the image tower: LiT); "
                     "matching params get no updates or decay; each must match something"),
        unfrozen=Field((), "exceptions to train.frozen, e.g. ('image/head/.*',)"),
    ),
    # Initialise params (all, or a subtree) from converted weights or another run, at step 0.
    init={
        "from": Field("", ".safetensors from tools/convert_weights.py, or a workdir"),
        "map": Field((), "((dst_regex, src_template), ...); empty = same names"),
    },
    eval=dict(
        batch_size=Field(256, "examples per embedding batch", gt=0),
        classnames=Field("", "manifest zero-shot: a text file, one class name a line"),
        # The default's prompts follow the embedded dataset's captions.
        templates=Field(shapes.prompt_templates(), "zero-shot prompt templates; '{}' = the "
                        "class name"),
    ),
)


def get_config(arg: str | None = None) -> ConfigDict:
  """The default experiment. `arg` is unused (kept for the `file.py:ARG` convention)."""
  del arg
  from xmodal import fields
  config = fields.defaults(SCHEMA)
  # One tower per modality; the key is the modality name used in batches and outputs.
  config.towers = ConfigDict(dict(image=tower_defaults("vit"), text=tower_defaults("text")))
  return config
