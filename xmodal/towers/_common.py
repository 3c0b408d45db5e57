"""Fields several tower kinds share (declared once here, included in each kind's FIELDS)."""

from xmodal.fields import Field

ACT = ("gelu_tanh", "gelu", "quick_gelu", "relu")
REMAT = ("none", "full", "dots")
POOL = ("gap", "cls", "map")


def transformer_fields(pool=("gap", POOL)) -> dict:
  """Fields every transformer tower shares: size, speed, head."""
  return dict(
      width=Field(96, "model width (token features)", gt=0),
      depth=Field(2, "transformer blocks", gt=0),
      num_heads=Field(4, "attention heads (must divide width)", gt=0),
      mlp_ratio=Field(4.0, "MLP hidden units = mlp_ratio x width (unless mlp_dim)", gt=0),
      mlp_dim=Field(0, "MLP hidden units; 0 = mlp_ratio x width", ge=0),
      act=Field("gelu_tanh", "MLP activation ('quick_gelu' is OpenAI CLIP's)", choices=ACT),
      layer_norm_eps=Field(1e-6, "LayerNorm epsilon", gt=0),
      remat=Field("none", "recompute in backward: 'full' (whole blocks), 'dots' (keep "
                  "matmuls) or 'none'", choices=REMAT),
      scan=Field(False, "nn.scan over blocks (params stacked under transformer/blocks)"),
      pool=Field(pool[0], "pooling of the tokens: 'gap' (mean), 'cls' (class token) or "
                 "'map' (attention pooling)", choices=pool[1]),
      head=Field("linear", "projection to model.embed_dim: 'linear', 'mlp' (2-layer "
                 "projector) or 'none' (width == embed_dim)", choices=("linear", "mlp", "none")),
      head_bias=Field(False, "a bias in the head's last layer"),
      head_hidden=Field(0, "hidden units of the 'mlp' head; 0 = width", ge=0),
  )


def image_text_fields() -> dict:
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


def _decoder_names():
  from xmodal.data import decoders   # noqa: PLC0415 (the registry imports no extras)
  return ("auto",) + decoders.names()


def input_fields(default_field: str = "") -> dict:
  """Where a tower's input comes from in a record, and how it is decoded."""
  return dict(
      field=Field("", "record field feeding this tower (manifest column, webdataset "
                  f"member extension, record key); '' = {default_field or 'the tower name'}"
                  + (" (or the first member with one of the kind's extensions)"
                     if default_field != "caption" else "")),
      decoder=Field("auto", "decoder of the field's value: 'auto' (by file extension or "
                    "content) or a decoder name (docs/data.md)", choices=_decoder_names),
  )
