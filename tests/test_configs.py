"""Every config file in configs/ loads and validates (manifest paths aside)."""

import glob
import importlib.util
import os
import subprocess
import sys

import pytest

from xmodal import config as config_lib
from tiny import write_converted_weights

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(ROOT, "configs", "*.py"))))
def test_config_file_validates(path, tmp_path):
  spec = importlib.util.spec_from_file_location("experiment", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  arg = None
  if os.path.basename(path) == "converted.py":   # needs what tools/convert_weights.py writes
    arg = _converted_folder(tmp_path / "weights")
  elif path.endswith("lit_frozen_clip_image.py"):   # refuses without its weights (below)
    arg = write_converted_weights(tmp_path / "w")
  config = module.get_config(arg)
  if config.data.source == "features":
    import numpy as np
    for name in ("train_files", "eval_files"):
      np.savez(tmp_path / f"{name}.npz", label=np.zeros(4, np.int32),
               **{m: np.zeros((4, t.features), np.float32) for m, t in config.towers.items()})
      config.data[name] = str(tmp_path / f"{name}.npz")
  if config.data.source == "manifest":
    config.data.train_files = config.data.eval_files = ""     # the manifests below instead
    for name in ("train_manifest", "eval_manifest"):
      (tmp_path / f"{name}.jsonl").write_text('{"image": "a.jpg", "caption": "x"}\n')
      config.data[name] = str(tmp_path / f"{name}.jsonl")
  config_lib.validate(config, num_devices=8)


def _converted_folder(folder):
  """A towers.json as tools/convert_weights.py writes it (the default towers, 20 text
  positions, a SigLIP-like scale bound)."""
  import json
  from xmodal import default_config
  towers = {m: t.to_dict() for m, t in default_config.get_config().towers.items()}
  towers["text"]["context_length"] = 20
  folder.mkdir()
  (folder / "towers.json").write_text(json.dumps({
      "towers": towers, "model.embed_dim": 64, "extra.context_length": 20,
      "loss.max_scale": 117.25}))
  return str(folder)


def test_converted_card_takes_the_conversion_settings_and_tokenizer(tmp_path):
  spec = importlib.util.spec_from_file_location("card", os.path.join(ROOT, "configs",
                                                                     "converted.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  folder = _converted_folder(tmp_path / "w")
  spm = tmp_path / "spiece.model"
  spm.write_bytes(b"")
  config = module.get_config(f"{folder},{spm}")
  assert (config.data.context_length, config.towers.text.context_length) == (20, 20)
  assert config.loss.max_scale == 117.25 and config.init.source == folder
  assert (config.data.tokenizer, config.data.tokenizer_path) == ("sentencepiece", str(spm))
  with pytest.raises(FileNotFoundError, match="towers.json"):
    module.get_config(str(tmp_path / "nothing"))


def test_lit_card_without_its_weights_is_an_error_naming_the_field(tmp_path):
  """Else it would train a random image tower, frozen."""
  spec = importlib.util.spec_from_file_location(
      "lit", os.path.join(ROOT, "configs", "lit_frozen_clip_image.py"))
  card = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(card)
  for arg in (str(tmp_path / "missing"), str(tmp_path)):   # no folder; no towers.json in it
    with pytest.raises(config_lib.ConfigError,
                       match=r"^config.init.source: the LiT card needs converted CLIP weights, "
                             r"and '.*' has no towers.json; write them with"):
      card.get_config(arg)
  config = card.get_config(write_converted_weights(tmp_path / "w"))
  assert config.init.source == str(tmp_path / "w" / "params.safetensors")
  assert config.train.frozen == ("image/.*",) and config.data.image_size == 16


@pytest.mark.slow
def test_lit_card_without_its_weights_stops_the_command_in_one_line(tmp_path):
  result = subprocess.run(
      [sys.executable, "-m", "xmodal.cli", "train",
       f"--config={os.path.join(ROOT, 'configs', 'lit_frozen_clip_image.py')}:{tmp_path / 'w'}",
       f"--workdir={tmp_path / 'run'}"], capture_output=True, text=True, timeout=120)
  assert result.returncode == 2
  assert result.stderr.startswith("xmodal train: error: config.init.source: the LiT card needs")
  assert result.stderr.count("\n") == 1 and not (tmp_path / "run").exists()


def test_clip_card_with_the_bpe_file_fits_openai_text_weights():
  """configs/clip_vit_b16.py:BPE tokenises as open_clip and its text tower has the shapes of
  OpenAI's ViT-B/16 text tower (vocab 49,408 x 512, 77 positions)."""
  import flax.linen
  from xmodal.models import model as model_lib
  spec = importlib.util.find_spec("open_clip")
  if spec is None:
    pytest.skip("open-clip-torch not installed (pip install open-clip-torch --no-deps)")
  bpe = os.path.join(os.path.dirname(spec.origin), "bpe_simple_vocab_16e6.txt.gz")
  card = os.path.join(ROOT, "configs", "clip_vit_b16.py")
  loader = importlib.util.spec_from_file_location("card", card)
  module = importlib.util.module_from_spec(loader)
  loader.loader.exec_module(module)
  config = module.get_config(bpe)
  assert (config.data.tokenizer, config.towers.text.pool) == ("clip", "argmax")
  config_lib.validate(config, num_devices=8)
  shapes = flax.linen.unbox(model_lib.abstract_params(model_lib.MultiTower(config), config))
  text = shapes["text"]["encoder"]
  assert text["token_embed"]["embedding"].shape == (49408, 512)
  assert text["pos_embed"].shape == (1, 77, 512)


def _card(name: str):
  loader = importlib.util.spec_from_file_location("card", os.path.join(ROOT, "configs", name))
  module = importlib.util.module_from_spec(loader)
  loader.loader.exec_module(module)
  return module


CLIPART_SHAPES = ("circle", "square", "triangle", "star", "ring")
CLIPART_COLOURS = {"red": (215, 40, 40), "green": (40, 170, 60), "blue": (45, 80, 225),
                   "yellow": (235, 200, 30), "purple": (140, 60, 190), "orange": (245, 130, 20)}


def write_clipart(folder, n: int, seed: int, name: str) -> str:
  """n clip-art images (one or two coloured shapes on white JPEG, transparent PNG or grey
  PNG backgrounds, 96-160 pixels) with captions "a red star" / "two red stars" and labels
  colour x shape; returns the JSONL manifest's path. classes.txt lists the 30 classes."""
  import json
  import math

  import numpy as np
  from PIL import Image, ImageDraw
  rng = np.random.default_rng(seed)
  os.makedirs(os.path.join(folder, name), exist_ok=True)
  rows = []
  for i in range(n):
    shape_i, colour_i = int(rng.integers(5)), int(rng.integers(6))
    shape, (colour, rgb) = CLIPART_SHAPES[shape_i], list(CLIPART_COLOURS.items())[colour_i]
    count, size, style = int(rng.integers(1, 3)), int(rng.integers(96, 161)), i % 3
    img = Image.new("RGBA", (size, size), ((255, 255, 255, 255), (0, 0, 0, 0),
                                           (225, 225, 225, 255))[style])
    draw = ImageDraw.Draw(img)
    for k in range(count):
      r = size * rng.uniform(0.14, 0.2) if count == 2 else size * rng.uniform(0.2, 0.3)
      cx = size * ((0.3 + 0.4 * k) if count == 2 else 0.5) + rng.uniform(-0.05, 0.05) * size
      cy = size * rng.uniform(0.35, 0.65)
      fill = tuple(int(np.clip(c + rng.integers(-20, 21), 0, 255)) for c in rgb) + (255,)
      box = (cx - r, cy - r, cx + r, cy + r)
      if shape == "circle":
        draw.ellipse(box, fill=fill)
      elif shape == "square":
        draw.rectangle(box, fill=fill)
      elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
      elif shape == "ring":
        draw.ellipse(box, outline=fill, width=max(3, int(r / 3)))
      else:
        points = [(cx + (r if j % 2 == 0 else r / 2.5) * math.sin(j * math.pi / 5),
                   cy - (r if j % 2 == 0 else r / 2.5) * math.cos(j * math.pi / 5))
                  for j in range(10)]
        draw.polygon(points, fill=fill)
    path = os.path.join(name, f"{i:04d}." + ("jpg" if style == 0 else "png"))
    if style == 0:
      img.convert("RGB").save(os.path.join(folder, path), quality=90)
    else:
      img.save(os.path.join(folder, path))
    thing = f"{colour} {shape}"
    rows.append({"image": path, "caption": f"a {thing}" if count == 1 else f"two {thing}s",
                 "label": colour_i * 5 + shape_i})
  with open(os.path.join(folder, f"{name}.jsonl"), "w") as f:
    f.write("\n".join(json.dumps(r) for r in rows) + "\n")
  with open(os.path.join(folder, "classes.txt"), "w") as f:
    f.write("\n".join(f"{c} {s}" for c in CLIPART_COLOURS for s in CLIPART_SHAPES) + "\n")
  return os.path.join(folder, f"{name}.jsonl")


def test_manifest_card_takes_a_size():
  """configs/manifest.py:TRAIN,EVAL[,size=cpu|gpu]: the old two-manifest form is the gpu
  size; cpu is a model a laptop trains in minutes; anything else is refused."""
  card = _card("manifest.py")
  gpu, old = card.get_config("a.jsonl,b.jsonl,size=gpu"), card.get_config("a.jsonl,b.jsonl")
  assert gpu.to_dict() == old.to_dict()
  assert (old.data.train_manifest, old.data.eval_manifest) == ("a.jsonl", "b.jsonl")
  assert old.data.image_size == 224 and old.batch_size == 1024
  cpu = card.get_config("a.jsonl, b.jsonl, size=cpu")
  assert (cpu.data.train_manifest, cpu.data.eval_manifest) == ("a.jsonl", "b.jsonl")
  assert cpu.data.image_size == 64 and cpu.batch_size == 64 and cpu.train.total_steps <= 500
  assert cpu.model.compute_dtype == "float32"
  for bad in ("a.jsonl", "a.jsonl,b.jsonl,size=tpu", "a.jsonl,b.jsonl,steps=3"):
    with pytest.raises(ValueError, match="TRAIN_MANIFEST,EVAL_MANIFEST"):
      card.get_config(bad)


@pytest.mark.slow
def test_manifest_card_cpu_size_learns_on_a_few_hundred_images(tmp_path):
  """`xmodal train --config=configs/manifest.py:TRAIN,EVAL,size=cpu` as a laptop runs it
  (one CPU device), on 320 generated clip-art images (a third of them transparent PNGs):
  the loss falls and held-out zero-shot top-1 is far above chance. The test runs 100 of the
  card's 300 steps; XMODAL_CARD_FULL=1 runs the card as it is (the numbers in its
  docstring) and prints the time and metrics."""
  import json
  import subprocess
  import sys
  import time
  folder = str(tmp_path)
  train_manifest = write_clipart(folder, 320, 0, "train")
  eval_manifest = write_clipart(folder, 96, 1, "eval")
  workdir = str(tmp_path / "run")
  command = [sys.executable, "-m", "xmodal.cli", "train", f"--workdir={workdir}",
             f"--config={os.path.join(ROOT, 'configs', 'manifest.py')}:{train_manifest},"
             f"{eval_manifest},size=cpu",
             f"--config.eval.classnames={os.path.join(folder, 'classes.txt')}",
             "--config.eval.templates=('a {}', 'two {}s')"]
  if not os.environ.get("XMODAL_CARD_FULL"):
    command += ["--config.train.total_steps=100", "--config.train.eval_every=0"]
  env = dict(os.environ, XLA_FLAGS="", PYTHONPATH=ROOT)     # one CPU device, as on a laptop
  t0 = time.time()
  out = subprocess.run(command, capture_output=True, text=True, env=env, timeout=1200)
  seconds = time.time() - t0
  assert out.returncode == 0, out.stderr[-3000:]
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    losses = [row["loss"] for row in map(json.loads, f) if "loss" in row]
  with open(os.path.join(workdir, "final_metrics.json")) as f:
    final = json.load(f)
  print(f"cpu card: {final['step']} steps in {seconds:.0f} s; loss {losses[0]:.2f} -> "
        f"{losses[-1]:.2f}; {final}")
  assert losses[-1] < 0.6 * losses[0]
  assert final["zeroshot/top1"] > 5 * final["zeroshot/chance"]
