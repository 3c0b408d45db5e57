"""Kind "text": a Transformer text tower (xmodal/models/text.py).

Input: int32 token ids [B, L], L = data.context_length, from the tokenizer
(`data.tokenizer`): [prefix, text, EOS, PAD...]; the trailing run of its pad id is padding.
Record values: a caption (str or UTF-8 bytes) or a list of captions; `data.captions`
picks one ("sample", "first"), keeps all ("all": one example per caption) or gives
`data.num_captions` of them to one example ("k": int32 [K, L], 1-to-K objectives).
"""

import dataclasses

import numpy as np

from xmodal.fields import ConfigError, Field
from xmodal.towers import _common

DEFAULT_FIELD = "caption"
EXTENSIONS = ("txt",)
# Prepared after every other tower of a record: caption sampling then draws from the
# element's rng after the image crop, as it always has (same crops and captions).
PREPARE_LAST = True

FIELDS = dict(
    **_common.transformer_fields(pool=("eot", ("eot", "argmax", "last", "mean", "first"))),
    **_common.image_text_fields(),
    causal=Field(True, "CLIP-style causal attention mask; False = bidirectional"),
    vocab_size=Field(0, "token embeddings; 0 = the tokenizer's, else at least the "
                     "tokenizer's", ge=0),
    context_length=Field(0, "position embeddings; 0 = data.context_length, else at least it",
                         ge=0),
    type_vocab_size=Field(0, "BERT token-type embeddings (type 0 is added); 0 = none", ge=0),
    field=Field("", "record field holding the caption(s); '' = 'caption' (data.caption_key "
                "of a manifest, the .txt member of a webdataset sample)"),
)


def check(config, name, cfg) -> None:
  if cfg.width % cfg.num_heads:
    raise ConfigError(f"config.towers.{name}.width: {cfg.width} is not divisible by num_heads "
                      f"{cfg.num_heads}")


def build(cfg, config, dtype, name):
  from xmodal.data import tokenizer as tokenizer_lib   # noqa: PLC0415
  from xmodal.models import text   # noqa: PLC0415
  tok = tokenizer_lib.get_tokenizer(config)
  return text.TextTransformer(
      vocab_size=cfg.vocab_size or tok.vocab_size,
      context_length=cfg.context_length or tok.context_length, width=cfg.width,
      depth=cfg.depth, num_heads=cfg.num_heads, causal=cfg.causal, pool=cfg.pool,
      pad_id=tok.pad_id, type_vocab_size=cfg.type_vocab_size, dtype=dtype, name=name,
      mlp_ratio=cfg.mlp_ratio, mlp_dim=cfg.mlp_dim, act=cfg.act, norm_first=cfg.norm_first,
      pre_norm=cfg.pre_norm, final_norm=cfg.final_norm, layer_norm_eps=cfg.layer_norm_eps,
      remat=cfg.remat, scan=cfg.scan, tokens=cfg.tokens)


def input_spec(cfg, config):
  return (config.data.context_length,), np.dtype(np.int32)


class Many(list):
  """Several examples from one record value (data.captions="all"): the pipeline unrolls
  the record into one example per item."""


def usable_captions(caption) -> list[str]:
  """A caption or list of captions -> the usable ones (non-empty, valid UTF-8). Raises
  BadData "not_utf8" (raw bytes that are not UTF-8, or a string with a lone surrogate,
  which a JSON "\\ud800" escape parses to) or "empty" when none is usable."""
  from xmodal.data import bad   # noqa: PLC0415
  items = list(caption) if isinstance(caption, (list, tuple, np.ndarray)) else [caption]
  good, why = [], ("empty", "no caption")
  for c in items:
    if isinstance(c, (bytes, np.bytes_)):
      try:
        c = bytes(c).decode("utf-8")
      except UnicodeDecodeError as e:
        why = ("not_utf8", f"caption is not UTF-8 ({e.reason} at byte {e.start})")
        continue
    if not isinstance(c, str) or not c.strip():
      why = ("empty", "empty caption")
      continue
    try:
      c.encode("utf-8")
    except UnicodeEncodeError as e:
      why = ("not_utf8", f"caption holds a lone surrogate ({e.reason} at character {e.start})")
      continue
    good.append(c)
  if not good:
    raise bad.BadData(*why)
  return good


@dataclasses.dataclass(frozen=True)
class Prepare:
  """Caption(s) -> token ids int32 [L] (or Many of them for captions="all" in training,
  [K, L] for captions="k" in training). "sample" draws one per use when training,
  evaluation takes the first."""
  tokenizer: object
  captions: str = "sample"
  num_captions: int = 1

  def __call__(self, caption, train: bool, rng: np.random.Generator):
    captions = usable_captions(caption)
    if self.captions == "all" and train:
      return Many(self.tokenizer.encode(c) for c in captions)
    if self.captions == "k" and train:
      # 1-to-K: K captions of the record, without repeats while it has enough (a short
      # record repeats its captions in a random order).
      order = rng.permutation(len(captions))
      return np.stack([self.tokenizer.encode(captions[order[i % len(captions)]])
                       for i in range(self.num_captions)])
    if self.captions == "sample" and train and len(captions) > 1:
      return self.tokenizer.encode(captions[int(rng.integers(len(captions)))])
    return self.tokenizer.encode(captions[0])


def preparer(cfg, config) -> Prepare:
  from xmodal.data import tokenizer as tokenizer_lib   # noqa: PLC0415
  return Prepare(tokenizer_lib.get_tokenizer(config), config.data.captions,
                 config.data.num_captions)


WORDS = ("amber", "basalt", "cobalt", "dune", "ember", "fjord", "garnet", "heron")


def synthetic(cfg, config, labels, rng, num_classes):
  """'a <word> thing <class>' per latent class, tokenized: int32 [n, L]."""
  from xmodal.data import tokenizer as tokenizer_lib   # noqa: PLC0415
  tok = tokenizer_lib.get_tokenizer(config)
  return tok.encode_batch([f"a {WORDS[c % len(WORDS)]} thing {c}" for c in labels])
