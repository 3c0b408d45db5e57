"""The embedded default experiment, and the schema every config is checked against.

`xmodal train` with no `--config` runs this file: a CLIP-style image/text model trained on
the procedurally generated `shapes` dataset (no network, about three minutes on 2 CPU
cores). Every key a config may set is declared here once, as a `fields.Field` with its
default, allowed values or range and a one-line doc; `get_config()` is the defaults,
`xmodal.config.validate` checks any config against the declarations, and docs/config.md is
generated from them (`python -m xmodal.config_reference`). Tower sections are checked
against their kind's declarations (`FIELDS` of the kind's module, xmodal/towers), since
their names are the user's modality names.

Config files in `configs/` start from `get_config()` and change what they need:

    from xmodal import default_config
    def get_config(arg=None):
      config = default_config.get_config()
      config.loss.name = "sigmoid"
      return config
"""

import ml_collections

from xmodal import towers
from xmodal.data import shapes
from xmodal.fields import Field, Named

ConfigDict = ml_collections.ConfigDict

def _objectives() -> tuple:
  from xmodal.losses import objectives   # noqa: PLC0415 (the registry imports jax)
  return objectives.names()


# ----------------------------------------------------------------------------- towers
# Each tower kind declares its own fields in its module (xmodal/towers/<kind>.py, or any
# module named by its path); these functions look them up.

def tower_kinds() -> tuple[str, ...]:
  """The tower kinds that ship with xmodal (modules of xmodal/towers)."""
  return towers.kinds()


def tower_fields(kind: str) -> dict:
  """The declared fields of one tower kind (a name or a module path)."""
  return towers.fields_of(kind)


def tower_defaults(kind: str) -> ConfigDict:
  """The defaults of one tower kind, as a config section."""
  return towers.defaults(kind)


# Older spellings, kept for config files that call them.
def vit_defaults() -> ConfigDict:
  return tower_defaults("vit")


def text_defaults() -> ConfigDict:
  return tower_defaults("text")


# ----------------------------------------------------------------------------- the run

def _source_choices():
  from xmodal.data import source_kinds   # noqa: PLC0415 (a registry of modules)
  return source_kinds.choices()


def _eval_source_choices():
  from xmodal.data import source_kinds   # noqa: PLC0415
  return source_kinds.eval_choices()


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
        # As open_clip: the loss uses the learned scale as it is (whole gradient at the
        # bound); the optimizer clamps the parameter after each step.
        max_scale=Field(100.0, "upper bound of the learned scale: the parameter is clamped to "
                        "log(max_scale) after each optimizer step; init.source raises it to "
                        "admit the scale of the weights it loads (SigLIP: ~110-120)", gt=0),
    ),
    data=dict(
        source=Field("shapes", "'shapes' (embedded), 'manifest' (JSONL/CSV/Parquet rows), "
                     "'webdataset' (tar shards), 'arrayrecord' (xmodal records), 'tfds' "
                     "(tfds.data_source), 'h5ad' (AnnData observations), 'mixture', "
                     "'synthetic' or 'features'",
                     choices=_source_choices),
        train_files=Field("", "files of the train split: brace patterns and/or globs, several "
                          "separated by ';', e.g. '/data/laion/{00000..00127}.tar'"),
        eval_files=Field("", "files of the eval split (same forms as train_files)"),
        eval_source=Field("", "kind of the eval split; '' = data.source (not mixture)",
                          choices=_eval_source_choices),
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
        genes=Field("", "h5ad sources: the gene panel (a file of gene names, one a line, or "
                    "names separated by ','), the order of each record's 'expression'; '' = "
                    "the file's genes"),
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
        # PNG/WebP decode whole: one 10k x 16k PNG costs seconds and gigabytes.
        max_image_pixels=Field(64_000_000, "encoded images whose header holds more pixels are "
                               "skipped and counted before decoding; 0 = no limit (PIL still "
                               "refuses > 179M pixels)", ge=0),
        alpha_background=Field((255, 255, 255), "RGB that transparent pixels are composited "
                               "onto", ge=0, le=255),
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
        # A step with a non-finite loss or gradient is skipped (no update, counted as
        # train/skipped_steps); this many in a row stop the run with the likely causes.
        max_nonfinite_steps=Field(20, "non-finite steps in a row (each skipped) that stop the "
                                  "run", ge=1),
        microbatches=Field(1, ">1: GradCache, K micro-batches per device shard, the same "
                           "gradient with one micro-batch's activations alive", gt=0),
        # LiT / partial fine-tuning: regexes over flattened param names.
        frozen=Field((), "regexes over param names ('image/.*' locks the image tower: LiT); "
                     "matching params get no updates or decay; each must match something"),
        unfrozen=Field((), "exceptions to train.frozen, e.g. ('image/head/.*',)"),
        frozen_random=Field(False, "allow frozen weight matrices that init does not load (a "
                            "random-feature baseline, a toy reference tower); by default "
                            "such a run is refused, as a LiT run without its weights"),
    ),
    # Initialise params (all, or a subtree) from converted weights or another run, at step 0.
    init=dict(
        source=Field("", "what tools/convert_weights.py wrote (its folder or "
                     "params.safetensors), any .safetensors of xmodal names, or a workdir "
                     "(called init.from before; still accepted)"),
        map=Field((), "((dst_regex, src_template), ...); empty = same names"),
    ),
    eval=dict(
        # Named tasks, each {kind, every, max_examples, data: {config.data keys}, and its
        # kind's fields} (xmodal/evaluate/kinds): several data sets, kinds and cadences.
        tasks=Named("evaluation tasks by name, each with its kind's fields (docs/config.md, "
                    "'Evaluation tasks'); results are '<task>/<metric>'",
                    default=lambda: default_tasks()),
        batch_size=Field(256, "examples per embedding batch", gt=0),
        classnames=Field("", "manifest zero-shot: a text file, one class name a line"),
        # The default's prompts follow the embedded dataset's captions.
        templates=Field(shapes.prompt_templates(), "zero-shot prompt templates; '{}' = the "
                        "class name"),
    ),
)


def default_tasks() -> dict:
  """The default evaluation, on the run's held-out split (data.eval_*): retrieval both
  ways for every loss pair; zero-shot classification where the model has an image and a
  text tower and the split has labels and class names; the space's geometry for every
  loss pair (modality gap, alignment, uniformity, effective rank); joint retrieval where a
  Symile / GRAM term spans three or more towers. Retrieval and zero-shot keep the names
  they had before tasks existed ("retrieval/image_to_text/R1", "zeroshot/top1")."""
  from xmodal.evaluate import kinds
  return {name: kinds.new(name) for name in ("retrieval", "zeroshot", "geometry", "joint")}


def get_config(arg: str | None = None) -> ConfigDict:
  """The default experiment. `arg` is unused (kept for the `file.py:ARG` convention)."""
  del arg
  from xmodal import fields
  config = fields.defaults(SCHEMA)
  # One tower per modality; the key is the modality name used in batches and outputs.
  config.towers = ConfigDict(dict(image=tower_defaults("vit"), text=tower_defaults("text")))
  return config
