"""The notebook API: `xmodal.get_tokenizer` by name, file, run directory and config;
`xmodal.zero_shot_classifier` against a brute-force numpy reference; the prompt data;
`xmodal.load` of converted weights against the transformers model they came from; and
the demo notebook (examples/demo.ipynb) executed on a run trained here."""

import gzip
import json
import os
import sys

import jax
import numpy as np
import pytest

import xmodal
from tiny import make_tiny_config
from xmodal import notebook, parallel
from xmodal.data import shapes, tokenizer as tok_lib
from xmodal.evaluate import prompts
from xmodal.models import model as model_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _bpe(folder) -> str:
  path = os.path.join(folder, "bpe.txt.gz")
  with gzip.open(path, "wt", encoding="utf-8") as f:
    f.write("#version: tiny\nd o\ndo g</w>\nc a\nca t</w>\n")
  return path


def _hf_json(folder) -> str:
  import tokenizers
  from tokenizers import models, pre_tokenizers, trainers
  tk = tokenizers.Tokenizer(models.WordPiece(unk_token="[UNK]"))
  tk.pre_tokenizer = pre_tokenizers.Whitespace()
  tk.train_from_iterator(["a dog", "a cat", "two dogs"] * 5, trainers.WordPieceTrainer(
      vocab_size=40, special_tokens=["[PAD]", "[UNK]", "[SEP]"]))
  os.makedirs(os.path.join(folder, "hf"), exist_ok=True)
  path = os.path.join(folder, "hf", "tokenizer.json")
  tk.save(path)
  return path


def test_get_tokenizer_by_name_file_run_directory_and_config(tmp_path):
  texts = ["a dog", "a cat and a dog!"]
  byte = xmodal.get_tokenizer("bytes")
  np.testing.assert_array_equal(byte(texts), tok_lib.ByteTokenizer(48).encode_batch(texts))
  assert byte("a dog").shape == (1, 48)                    # a string: one row, as open_clip
  bpe = xmodal.get_tokenizer(_bpe(str(tmp_path)))          # CLIP BPE: CLIP's 77 by default
  np.testing.assert_array_equal(bpe(texts),
                                tok_lib.make_tokenizer("clip", 77, _bpe(str(tmp_path)))
                                .encode_batch(texts))
  hf = _hf_json(str(tmp_path))
  for path in (hf, os.path.dirname(hf)):                   # the file or its folder
    tok = xmodal.get_tokenizer(path, context_length=8)
    np.testing.assert_array_equal(tok(texts), tok_lib.make_tokenizer("hf", 8, hf)(texts))
  # A run directory: its own tokenizer and context length (config.json is enough).
  config = make_tiny_config(**{"data.tokenizer": "clip", "data.context_length": 12,
                               "data.tokenizer_path": _bpe(str(tmp_path))})
  (tmp_path / "run").mkdir()
  (tmp_path / "run" / "config.json").write_text(config.to_json())
  for source in (str(tmp_path / "run"), config):
    tok = xmodal.get_tokenizer(source)
    assert isinstance(tok, tok_lib.ClipBPETokenizer) and tok.context_length == 12
  assert xmodal.get_tokenizer(config, context_length=20)("dog").shape == (1, 20)
  (tmp_path / "notes.txt").write_text("not a tokenizer\n")
  with pytest.raises(ValueError, match="not a tokenizer file"):
    xmodal.get_tokenizer(str(tmp_path / "notes.txt"))
  (tmp_path / "w").mkdir()
  (tmp_path / "w" / "towers.json").write_text("{}")
  (tmp_path / "w" / "params.safetensors").write_bytes(b"")
  with pytest.raises(ValueError, match="converted weights, which carry no tokenizer"):
    xmodal.get_tokenizer(str(tmp_path / "w"))


def _fresh_model(config):
  """A LoadedModel with freshly initialised params (no training needed)."""
  mesh = parallel.make_mesh(config, jax.devices()[:1])
  model = model_lib.MultiTower(config)
  params = model_lib.unbox(model.init(jax.random.key(0), model_lib.dummy_inputs(config))["params"])
  return notebook.LoadedModel(config, params, 0, mesh), model, params


def test_zero_shot_classifier_matches_a_brute_force_reference():
  """[D, C]: per class, the mean over templates of the text tower's unit embeddings of the
  filled prompts (the Flax model applied directly to the token ids), renormalised; string
  and function templates give the same classifier."""
  config = make_tiny_config()
  config.mesh.data = 1
  m, model, params = _fresh_model(config)
  classes, templates = shapes.CLASSNAMES[:5], ("a photo of a {}.", "{} on a dark field")
  W = xmodal.zero_shot_classifier(m, classes, templates)
  assert W.shape == (config.model.embed_dim, 5) and W.dtype == np.float32
  tok = tok_lib.get_tokenizer(config)
  want = []
  for c in classes:
    ids = tok.encode_batch([t.format(c) for t in templates])
    z = np.asarray(model.apply({"params": params}, {"text": ids})["text"])
    mean = z.mean(axis=0)
    want.append(mean / np.linalg.norm(mean))
  np.testing.assert_allclose(W, np.stack(want, axis=1), atol=1e-5)
  functions = [lambda c: f"a photo of a {c}.", lambda c: f"{c} on a dark field"]
  np.testing.assert_allclose(xmodal.zero_shot_classifier(m, classes, functions), W, atol=1e-6)
  single = xmodal.zero_shot_classifier(m, classes, "a photo of a {}.")
  assert single.shape == W.shape and not np.allclose(single, W)


def test_prompt_data():
  """1,000 ImageNet class names in label order; CLIP's 80 templates, its best 7 among them;
  SigLIP's: the 80 and the bare name in big_vision's canonical form. The class-name file
  reads as config.eval.classnames."""
  from xmodal.data import pipeline
  names = xmodal.IMAGENET_CLASSNAMES
  assert len(names) == 1000 and (names[0], names[1], names[207], names[999]) == (
      "tench", "goldfish", "Golden Retriever", "toilet paper")
  openai = xmodal.OPENAI_IMAGENET_TEMPLATES
  assert len(openai) == 80 == len(set(openai)) and all(t.count("{}") == 1 for t in openai)
  assert set(xmodal.TEMPLATES["openai_imagenet_7"]) < set(openai)
  assert len(xmodal.TEMPLATES["openai_imagenet_7"]) == 7
  siglip = xmodal.SIGLIP_TEMPLATES
  assert len(siglip) == 81 and siglip[-1] == "{}" and siglip[0] == "a bad photo of a {}"
  assert all(t == t.lower() and "." not in t and t.count("{}") == 1 for t in siglip)
  assert prompts.canonicalize("A photo of the {}.") == "a photo of the {}"
  assert prompts.canonicalize("Crane, bird_x!", keep=",") == "crane, bird x"
  config = make_tiny_config(**{"data.source": "manifest",
                               "eval.classnames": prompts.IMAGENET_CLASSNAMES_FILE})
  assert pipeline.classnames(config) == names


@pytest.mark.slow
def test_load_converted_weights_matches_transformers(tmp_path):
  """tools/convert_weights.py's output, opened by `xmodal.load` (the folder or its
  .safetensors file): unit embeddings equal the transformers CLIP model's normalised
  features to 1e-4; text strings without a tokenizer are refused with what to do."""
  pytest.importorskip("torch")
  pytest.importorskip("transformers")
  sys.path.insert(0, os.path.join(ROOT, "tools"))
  import convert_weights
  import test_convert
  ref = test_convert._clip(tmp_path / "hf")
  convert_weights.main(["--input", str(tmp_path / "hf"), "--output", str(tmp_path / "w")])
  images = np.round(test_convert._images()).astype(np.uint8)   # what encode takes from users
  ids = test_convert._clip_text()
  want_img, want_txt = test_convert._clip_features(ref, images.astype(np.float32), ids)
  for path in (tmp_path / "w", tmp_path / "w" / "params.safetensors"):
    m = xmodal.load(str(path), devices=jax.devices()[:1])
    assert m.config.data.image_size == 32 and m.config.data.context_length == 16
    z = m.encode(image=images, text=ids.astype(np.int32))
    for got, want in ((z["image"], want_img), (z["text"], want_txt)):
      np.testing.assert_allclose(got, want / np.linalg.norm(want, axis=1, keepdims=True),
                                 atol=1e-4)
    with pytest.raises(ValueError, match=r"tokenizer=FILE"):
      m.encode(text=["a dog"])
  assert "image/encoder" in m.tabulate(depth=2)


@pytest.mark.slow
def test_demo_notebook_runs_on_a_trained_run(tmp_path):
  """examples/demo.ipynb executed by nbclient on a tiny run trained here: every cell runs,
  and its zero-shot top-1 equals the run's own evaluation (final_metrics.json)."""
  nbclient = pytest.importorskip("nbclient")
  import nbformat
  from xmodal import train
  config = make_tiny_config(**{"train.total_steps": 10, "train.checkpoint_every": 10})
  workdir = str(tmp_path / "run")
  train.train(config, workdir)
  with open(os.path.join(workdir, "final_metrics.json")) as f:
    final = json.load(f)
  nb = nbformat.read(os.path.join(ROOT, "examples", "demo.ipynb"), as_version=4)
  os.environ["XMODAL_DEMO_RUN"] = workdir            # the kernel inherits the environment
  try:
    nbclient.NotebookClient(nb, timeout=180, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
  finally:
    del os.environ["XMODAL_DEMO_RUN"]
  outputs = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                    for o in c.outputs)
  line = next(x for x in outputs.splitlines() if x.startswith('{"zeroshot/top1"'))
  result = json.loads(line)
  assert result["images"] == config.data.shapes_eval_size and result["classes"] == 30
  assert abs(result["zeroshot/top1"] - final["zeroshot/top1"]) <= 1 / result["images"]
  assert "MultiTower Summary" in outputs and "1000 ('tench'" in outputs
