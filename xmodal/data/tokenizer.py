"""Tokenizers: text -> int32 ids [L].

`ByteTokenizer` (the default, `data.tokenizer="bytes"`) needs no vocabulary file: each UTF-8
byte is one token (id = byte + 2), then EOS (id 1), then padding (id 0) up to
`context_length`. Text longer than `context_length - 1` bytes is truncated and EOS is still
the last token, so the text tower's "eot" pooling always finds it. No lowercasing.
"""

import numpy as np

PAD_ID = 0
EOS_ID = 1


class ByteTokenizer:
  vocab_size = 256 + 2
  pad_id = PAD_ID
  eos_id = EOS_ID

  def __init__(self, context_length: int):
    if context_length < 2:
      raise ValueError(f"context_length must be >= 2, got {context_length}")
    self.context_length = context_length

  def encode(self, text: str) -> np.ndarray:
    """One string -> int32 [context_length]."""
    data = text.encode("utf-8")[: self.context_length - 1]
    ids = np.zeros(self.context_length, np.int32)
    ids[: len(data)] = np.frombuffer(data, np.uint8).astype(np.int32) + 2
    ids[len(data)] = EOS_ID
    return ids

  def encode_batch(self, texts) -> np.ndarray:
    """A list of N strings -> int32 [N, context_length]."""
    return np.stack([self.encode(t) for t in texts]) if len(texts) else np.zeros(
        (0, self.context_length), np.int32)

  def decode(self, ids) -> str:
    ids = [int(i) for i in ids]
    end = ids.index(EOS_ID) if EOS_ID in ids else len(ids)
    return bytes(i - 2 for i in ids[:end] if i >= 2).decode("utf-8", errors="replace")


def get_tokenizer(config):
  """The tokenizer named by `config.data.tokenizer`."""
  if config.data.tokenizer == "bytes":
    return ByteTokenizer(config.data.context_length)
  raise ValueError(f"config.data.tokenizer: unknown tokenizer {config.data.tokenizer!r}")
