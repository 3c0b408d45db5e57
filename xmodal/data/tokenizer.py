"""Tokenizers: text -> int32 ids [L], chosen by `data.tokenizer` (+ `data.tokenizer_path`).

Every tokenizer produces the same layout, which the text tower relies on:

    [prefix..., text tokens..., EOS, PAD, PAD, ...]      length data.context_length

The prefix is empty, CLIP's SOT, or the leading special tokens of a Hugging Face template
(BERT's [CLS], so position 0 holds [CLS]). Padding only ever follows EOS, so the text
tower treats *trailing* PAD ids as padding ("eot" pooling = the last position before them,
i.e. EOS; bidirectional attention and "mean" pooling mask them). A PAD id that is also a
real token (CLIP pads with 0, which is "!") is therefore still real inside the text.
Text whose tokens do not fit is truncated so that the prefix and EOS are always present
and EOS is the last real token. `vocab_size` counts every id the tokenizer can emit
(extra ids added for PAD or EOS included), so the text tower's embedding table fits. If
`data.lowercase` is set, text is lowercased before any tokenizer sees it.

  "bytes"          (default) no file. Each UTF-8 byte is one token (id = byte + 2),
                   EOS = 1, PAD = 0; vocab 258. No lowercasing, no normalisation.
  "sentencepiece"  a SentencePiece `.model` file. Text normalisation is the model's own
                   (usually NFKC); no lowercasing. No BOS. EOS = the model's `</s>` id, or
                   a new id if the model has none; PAD = the model's pad id, or a new id
                   after the vocabulary if the model has none (the SentencePiece default).
  "hf"             a Hugging Face `tokenizer.json` (the `tokenizers` library). Normalisation
                   (lowercasing included) is whatever the file's normalizer does.
                   With a post-processor that adds special tokens (a template such as
                   BERT's `[CLS] $A [SEP]`), text is encoded as `transformers` does: the
                   template is applied and the text truncated by the library so that the
                   template's special tokens stay; EOS = the template's last token (BERT:
                   `[SEP]`). A template that does not end in a special token (BOS only)
                   gets EOS appended after it. Without such a post-processor no special
                   tokens are added and EOS is appended; EOS is then the first of `</s>`,
                   `[SEP]`, `<|endoftext|>`, `<eos>` present in the vocabulary (else a new
                   id). PAD = the file's own padding id, else the first of `<pad>`,
                   `[PAD]` (else a new id); never the EOS id.
  "clip"           the CLIP byte-level BPE: a merges file such as OpenAI's
                   `bpe_simple_vocab_16e6.txt.gz` (plain or gzipped; first line a header, at
                   most 48,894 merges read, as in CLIP). Text is HTML-unescaped, whitespace-
                   collapsed and lowercased (and `ftfy.fix_text`-ed when ftfy is installed).
                   Ids: 256 bytes, 256 bytes + `</w>`, one per merge, then
                   `<start_of_text>` (SOT), `<end_of_text>` (EOT = EOS, the highest id):
                   vocab 49,408 for the OpenAI file. Exactly open_clip's tokenisation:
                   [SOT, tokens..., EOT, 0, 0, ...] padded with 0 (the token "!"), long
                   text cut to SOT + the first L-2 tokens + EOT, and the literal strings
                   `<start_of_text>` / `<end_of_text>` in text become SOT / EOT as in
                   open_clip. So OpenAI / open_clip checkpoints (vocab 49,408) fit as they are.
                   The BPE itself runs in the `tokenizers` library (`ClipBPETokenizer`).
"""

import functools
import gzip
import html
import os

import numpy as np

PAD_ID = 0
EOS_ID = 1


def _pad(ids, context_length: int, pad_id: int) -> np.ndarray:
  """ids (at most context_length of them), then PAD up to context_length."""
  out = np.full(context_length, pad_id, np.int32)
  out[: len(ids)] = ids
  return out


def _layout(ids, context_length: int, eos_id: int, pad_id: int, prefix=()) -> np.ndarray:
  """prefix + ids truncated to fit, then EOS, then PAD up to context_length."""
  room = context_length - 1 - len(prefix)
  return _pad(list(prefix) + list(ids[:room]) + [eos_id], context_length, pad_id)


class _Base:
  context_length: int
  pad_id: int
  eos_id: int
  vocab_size: int
  lowercase: bool = False

  def __call__(self, texts) -> np.ndarray:
    """A string or a list of N strings -> int32 [N, context_length] (N = 1 for a string),
    as open_clip's tokenizers are called."""
    return self.encode_batch([texts] if isinstance(texts, str) else list(texts))

  def _prep(self, text: str) -> str:
    return text.lower() if self.lowercase else text

  def encode_batch(self, texts) -> np.ndarray:
    """A list of N strings -> int32 [N, context_length]."""
    if not len(texts):
      return np.zeros((0, self.context_length), np.int32)
    return np.stack([self.encode(t) for t in texts])

  def _real(self, ids) -> list[int]:
    """The ids before the first EOS (without EOS: before the trailing PAD ids)."""
    ids = [int(i) for i in ids]
    if self.eos_id in ids:
      return ids[: ids.index(self.eos_id)]
    while ids and ids[-1] == self.pad_id:
      ids.pop()
    return ids


def _check_length(context_length: int, minimum: int = 2):
  if context_length < minimum:
    raise ValueError(f"context_length must be >= {minimum}, got {context_length}")


class ByteTokenizer(_Base):
  vocab_size = 256 + 2
  pad_id = PAD_ID
  eos_id = EOS_ID

  def __init__(self, context_length: int, lowercase: bool = False):
    _check_length(context_length)
    self.context_length = context_length
    self.lowercase = lowercase

  def encode(self, text: str) -> np.ndarray:
    """One string -> int32 [context_length]."""
    data = self._prep(text).encode("utf-8")[: self.context_length - 1]
    ids = np.zeros(self.context_length, np.int32)
    ids[: len(data)] = np.frombuffer(data, np.uint8).astype(np.int32) + 2
    ids[len(data)] = EOS_ID
    return ids

  def decode(self, ids) -> str:
    ids = [int(i) for i in ids]
    end = ids.index(EOS_ID) if EOS_ID in ids else len(ids)
    return bytes(i - 2 for i in ids[:end] if i >= 2).decode("utf-8", errors="replace")


class _LazyFile(_Base):
  """A tokenizer backed by a file: loaded on first use, pickled as its path (grain workers)."""

  def __init__(self, path: str, context_length: int, lowercase: bool = False):
    _check_length(context_length)
    path = os.path.expanduser(path)
    if not os.path.isfile(path):
      raise FileNotFoundError(f"tokenizer file {path!r} does not exist")
    self.path, self.context_length, self.lowercase = path, context_length, lowercase
    self._impl = None
    self._load()

  def __getstate__(self):
    state = dict(self.__dict__)
    state["_impl"] = None
    return state

  def __setstate__(self, state):
    self.__dict__.update(state)

  @property
  def impl(self):
    if self._impl is None:
      self._load()
    return self._impl


class SentencePieceTokenizer(_LazyFile):
  def _load(self):
    import sentencepiece as spm
    self._impl = spm.SentencePieceProcessor(model_file=self.path)
    n = self._impl.get_piece_size()
    extra = n
    eos = self._impl.eos_id()
    if eos < 0:
      eos, extra = extra, extra + 1
    pad = self._impl.pad_id()
    if pad < 0:
      pad, extra = extra, extra + 1
    self.eos_id, self.pad_id, self.vocab_size = eos, pad, extra

  def encode(self, text: str) -> np.ndarray:
    ids = self.impl.encode(self._prep(text), out_type=int)
    return _layout(ids, self.context_length, self.eos_id, self.pad_id)

  def decode(self, ids) -> str:
    n = self.impl.get_piece_size()
    return self.impl.decode([i for i in self._real(ids) if i < n])


class HFTokenizer(_LazyFile):
  EOS_CANDIDATES = ("</s>", "[SEP]", "<|endoftext|>", "<eos>")
  PAD_CANDIDATES = ("<pad>", "[PAD]")
  PROBE = "a b c 1"          # text that tokenizes to something with any vocabulary

  def _load(self):
    import tokenizers
    impl = tokenizers.Tokenizer.from_file(self.path)
    file_pad = (impl.padding or {}).get("pad_id")
    impl.no_truncation()
    impl.no_padding()
    vocab = impl.get_vocab(with_added_tokens=True)
    extra = max(vocab.values()) + 1 if vocab else 0

    def pick(candidates):
      nonlocal extra
      for c in candidates:
        if c in vocab:
          return vocab[c]
      extra += 1
      return extra - 1

    # A template: the post-processor adds special tokens around one sequence. Where they
    # sit comes from encoding a probe (special tokens have no sequence id).
    n_special = impl.post_processor.num_special_tokens_to_add(False) if impl.post_processor else 0
    self.template = n_special > 0
    self.append_eos = True
    if self.template:
      probe = impl.encode(self.PROBE, add_special_tokens=True)
      if all(s is None for s in probe.sequence_ids):
        raise ValueError(f"{self.path}: the probe text {self.PROBE!r} gives no text tokens; "
                         f"cannot place the post-processor's special tokens")
      if probe.sequence_ids[-1] is None:            # the template ends in a special token
        self.eos_id, self.append_eos = probe.ids[-1], False
      minimum = n_special + 1 + self.append_eos     # room for one text token
      if self.context_length < minimum:
        raise ValueError(f"context_length must be >= {minimum} for {self.path} (its template "
                         f"adds {n_special} special tokens), got {self.context_length}")
      # The library truncates the text so that the template's special tokens stay.
      impl.enable_truncation(self.context_length - self.append_eos)
    if self.append_eos:
      self.eos_id = pick(self.EOS_CANDIDATES)
    if file_pad is not None and file_pad != self.eos_id:
      self.pad_id = file_pad
    else:
      self.pad_id = pick(self.PAD_CANDIDATES)
    self.vocab_size = extra
    self._impl = impl

  def encode(self, text: str) -> np.ndarray:
    if not self.template:
      ids = self.impl.encode(self._prep(text), add_special_tokens=False).ids
      return _layout(ids, self.context_length, self.eos_id, self.pad_id)
    ids = self.impl.encode(self._prep(text), add_special_tokens=True).ids
    if self.append_eos:
      ids = ids + [self.eos_id]
    return _pad(ids, self.context_length, self.pad_id)

  def decode(self, ids) -> str:
    return self.impl.decode(self._real(ids))     # the template's special tokens skipped


# ----------------------------------------------------------------------------- CLIP BPE

CLIP_MAX_MERGES = 49152 - 256 - 2


@functools.lru_cache()
def byte_alphabet() -> dict[int, str]:
  """Each byte -> a printable unicode character (printable Latin-1 bytes map to
  themselves; the rest to code points from 256 up, in byte order), so that BPE never
  sees whitespace or control characters. Dict order = vocabulary order: the printable
  bytes first, then the remapped ones."""
  keep = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
          + list(range(ord("®"), ord("ÿ") + 1)))
  table = {b: chr(b) for b in keep}
  for shift, b in enumerate(b for b in range(256) if b not in table):
    table[b] = chr(256 + shift)
  return table


class ClipBPETokenizer(_LazyFile):
  """CLIP's byte-level BPE on the `tokenizers` library: its BPE model (with CLIP's `</w>`
  end-of-word suffix), a pre-tokenizer that keeps the matches of CLIP's word pattern, and
  the byte-to-character table that GPT-2 and CLIP share. CLIP's text cleaning (`_clean`)
  and the literal `<start_of_text>` / `<end_of_text>` strings stay in Python: CLIP matches
  them with the same pattern as words, so after punctuation ("!<end_of_text>") they are
  plain text, which the library's added-token matcher would not reproduce."""
  SOT, EOT = "<start_of_text>", "<end_of_text>"
  # open_clip's pattern. The special tokens come first: written in the text they are
  # SOT / EOT. Used only for text that contains them (`_pieces`).
  PATTERN = (r"""<start_of_text>|<end_of_text>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|"""
             r"""[^\s\p{L}\p{N}]+""")
  WORDS = r"""(?i)'s|'t|'re|'ve|'m|'ll|'d|\p{L}+|\p{N}|[^\s\p{L}\p{N}]+"""

  def _load(self):
    import regex
    import tokenizers
    from tokenizers import models, pre_tokenizers
    opener = gzip.open if self.path.endswith(".gz") else open
    with opener(self.path, "rb") as f:
      lines = f.read().decode("utf-8").split("\n")
    merges = []
    for line in lines[1:]:               # line 0 is a "#version" header
      parts = line.split()
      if len(parts) == 2:
        merges.append(tuple(parts))
      if len(merges) == CLIP_MAX_MERGES:
        break
    symbols = list(byte_alphabet().values())
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
    vocab += [self.SOT, self.EOT]
    # A token listed twice keeps its last id, as in CLIP's dict(zip(vocab, range(...))).
    self.token_id = {t: i for i, t in enumerate(vocab)}
    self.id_token = vocab
    self.sot_id, self.eos_id = self.token_id[self.SOT], self.token_id[self.EOT]
    self.pad_id = 0                  # open_clip's padding; also the token "!" (see top)
    self.vocab_size = len(vocab)
    impl = tokenizers.Tokenizer(models.BPE(vocab=self.token_id, merges=merges,
                                           end_of_word_suffix="</w>"))
    # Keep the pattern's matches (invert=True), drop what lies between them (whitespace),
    # then map each piece's UTF-8 bytes to the byte alphabet: CLIP's findall + byte encoder.
    impl.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(tokenizers.Regex(self.WORDS), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    self._pattern = regex.compile(self.PATTERN, regex.IGNORECASE)
    self._impl = impl

  def _clean(self, text: str) -> str:
    try:
      import ftfy
      text = ftfy.fix_text(text)
    except ImportError:
      pass
    text = html.unescape(html.unescape(text))
    return " ".join(text.split()).lower()

  def _merge(self, word: str) -> list[str]:
    """The BPE tokens of one pre-token in the byte alphabet (the library's BPE model)."""
    return [t.value for t in self.impl.model.tokenize(word)]

  def _tokens_clean(self, text: str) -> list[int]:
    if "_of_text>" not in text:        # no literal special token: one library call
      return self.impl.encode(text, add_special_tokens=False).ids
    ids, words = [], []
    for piece in self._pattern.findall(text) + [None]:
      if piece in (self.SOT, self.EOT, None):
        if words:
          ids += self.impl.encode(words, is_pretokenized=True, add_special_tokens=False).ids
        if piece is not None:
          ids.append(self.token_id[piece])
        words = []
      else:
        words.append(piece)
    return ids

  def tokens(self, text: str) -> list[int]:
    """Text -> BPE ids, without SOT/EOT."""
    return self._tokens_clean(self._clean(text))

  def encode(self, text: str) -> np.ndarray:
    return _layout(self.tokens(text), self.context_length, self.eos_id, self.pad_id,
                   prefix=(self.sot_id,))

  def encode_batch(self, texts) -> np.ndarray:
    """N strings -> int32 [N, context_length]; plain texts in one parallel library call."""
    texts = [self._clean(t) for t in texts]
    out = np.full((len(texts), self.context_length), self.pad_id, np.int32)
    plain = [i for i, t in enumerate(texts) if "_of_text>" not in t]
    encoded = dict(zip(plain, self.impl.encode_batch([texts[i] for i in plain],
                                                     add_special_tokens=False)))
    for i, text in enumerate(texts):
      ids = encoded[i].ids if i in encoded else self._tokens_clean(text)
      out[i] = _layout(ids, self.context_length, self.eos_id, self.pad_id, prefix=(self.sot_id,))
    return out

  def decode(self, ids) -> str:
    self.impl  # noqa: B018  (loads the file in a fresh worker)
    inverse = {v: k for k, v in byte_alphabet().items()}
    out = bytearray()
    for token in (self.id_token[i] for i in self._real(ids) if i != self.sot_id):
      word = token[:-4] if token.endswith("</w>") else token
      out.extend(inverse[c] for c in word)
      if token.endswith("</w>"):
        out.extend(b" ")
    return out.decode("utf-8", errors="replace").strip()


TOKENIZERS = {"bytes": None, "sentencepiece": SentencePieceTokenizer, "hf": HFTokenizer,
              "clip": ClipBPETokenizer}


@functools.lru_cache(maxsize=8)
def make_tokenizer(kind: str, context_length: int, path: str = "", lowercase: bool = False):
  """The tokenizer of `kind`; cached, so a run resolves (and loads) it once however many
  towers, preparers and evaluators ask for it."""
  return _make_tokenizer(kind, context_length, path, lowercase)


def _make_tokenizer(kind: str, context_length: int, path: str = "", lowercase: bool = False):
  if kind == "bytes":
    return ByteTokenizer(context_length, lowercase)
  if kind not in TOKENIZERS:
    raise ValueError(f"unknown tokenizer {kind!r}; known: {sorted(TOKENIZERS)}")
  if not path:
    raise ValueError(f"tokenizer {kind!r} needs a file (config.data.tokenizer_path)")
  if kind == "clip":
    _check_length(context_length, 3)
  return TOKENIZERS[kind](path, context_length, lowercase)


def kind_of_file(path: str) -> str:
  """The tokenizer kind of a file: "sentencepiece" (.model), "hf" (a tokenizer.json, or a
  folder holding one) or "clip" (a BPE merges file, plain or gzipped, "#version" header)."""
  path = os.path.expanduser(path)
  if os.path.isdir(path) and os.path.isfile(os.path.join(path, "tokenizer.json")):
    return "hf"
  if path.endswith(".model"):
    return "sentencepiece"
  if path.endswith(".json"):
    return "hf"
  opener = gzip.open if path.endswith(".gz") else open
  try:
    with opener(path, "rb") as f:
      if f.readline().startswith(b"#version"):
        return "clip"
  except OSError:
    pass
  raise ValueError(f"{path!r}: not a tokenizer file (a SentencePiece .model, a Hugging Face "
                   f"tokenizer.json or a CLIP BPE merges file such as "
                   f"bpe_simple_vocab_16e6.txt.gz)")


def get_tokenizer(config):
  """The tokenizer named by `config.data.tokenizer` (file: `config.data.tokenizer_path`)."""
  d = config.data
  try:
    return make_tokenizer(d.tokenizer, d.context_length, d.get("tokenizer_path", ""),
                          d.get("lowercase", False))
  except (ValueError, FileNotFoundError) as e:
    raise ValueError(f"config.data.tokenizer: {e}") from None
