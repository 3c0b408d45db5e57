"""End to end: a short run learns, checkpoints, evaluates, loads in a notebook, and a killed
run resumes to exactly the loss sequence of an uninterrupted one."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import xmodal
from xmodal import cli, metrics as metrics_lib, train
from xmodal.data import shapes
from tiny import make_tiny_config

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))


def _losses(workdir):
  """{step: loss}, the last row of each step winning (a resumed run repeats steps)."""
  return {r["step"]: r["loss"] for r in metrics_lib.read_jsonl(workdir) if "loss" in r}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("run"))
  config = make_tiny_config(**{"train.total_steps": 80, "train.log_every": 5,
                               "train.eval_every": 40, "train.checkpoint_every": 30,
                               "optim.warmup_steps": 5, "optim.lr": 3e-3,
                               "data.image_size": 32, "towers.image.patch_size": 8})
  final = train.train(config, workdir)
  return config, workdir, final


def test_loss_goes_down_and_retrieval_beats_chance(trained):
  _, workdir, final = trained
  losses = list(_losses(workdir).values())
  assert losses[-1] < 0.75 * losses[0], losses
  chance_r10 = 10 / final["eval/examples"]
  assert final["retrieval/image->text/R@10"] > 2 * chance_r10, final
  assert final["zeroshot/top1"] > 2 * final["zeroshot/chance"], final


def test_run_writes_metrics_checkpoints_and_plots(trained):
  config, workdir, _ = trained
  rows = metrics_lib.read_jsonl(workdir)
  first = rows[0]
  assert first["step"] == 1 and first["compile_time_s"] > 0
  logged = [r for r in rows if "loss" in r]
  for key in ("lr", "scale", "grad_norm", "examples_per_s", "steps_per_s", "eta_s",
              "step_time_s", "data/skipped"):
    assert key in logged[-1], key
  assert [r["step"] for r in rows if "zeroshot/top1" in r] == [40, 80]
  steps = sorted(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints")) if s.isdigit())
  assert steps == [60, 80]            # every 30 steps and at the end, newest 2 kept
  assert os.path.exists(os.path.join(workdir, "loss_curve.png"))
  assert os.path.exists(os.path.join(workdir, "similarity_80.png"))
  assert any(f.startswith("events.out.tfevents")
             for f in os.listdir(os.path.join(workdir, "tensorboard")))
  final = json.load(open(os.path.join(workdir, "final_metrics.json")))
  assert final["step"] == 80


def test_notebook_load_encodes_and_scores(trained):
  config, workdir, final = trained
  m = xmodal.load(workdir)
  assert m.step == 80 and m.config.model.embed_dim == config.model.embed_dim
  source = shapes.ShapesSource("eval", 8, 48)   # another resolution: resized on the way in
  examples = [source[i] for i in range(8)]
  z = m.encode(image=np.stack([e["image"] for e in examples]),
               text=[e["caption"] for e in examples])
  assert z["image"].shape == (8, config.model.embed_dim)
  np.testing.assert_allclose(np.linalg.norm(z["text"], axis=1), 1.0, rtol=1e-5)
  sim = m.similarity(image=[e["image"] for e in examples], text=[e["caption"] for e in examples])
  assert sim.shape == (8, 8)
  # Matching captions score above the average non-matching one.
  assert np.mean(np.diag(sim)) > np.mean(sim[~np.eye(8, dtype=bool)])


def test_eval_command_reproduces_the_final_metrics(trained):
  _, workdir, final = trained
  assert cli.main(["xmodal", "eval", f"--workdir={workdir}"]) == 0
  rows = [r for r in metrics_lib.read_jsonl(workdir) if "retrieval/image->text/R@1" in r]
  again = rows[-1]
  for key in ("retrieval/image->text/R@1", "retrieval/text->image/R@5", "zeroshot/top1"):
    assert again[key] == pytest.approx(final[key], abs=1e-6), key


def test_killed_run_resumes_to_the_uninterrupted_loss_sequence(tmp_path):
  overrides = {"train.total_steps": 40, "train.checkpoint_every": 5, "train.log_every": 1,
               "optim.warmup_steps": 3, "data.image_size": 32, "towers.image.patch_size": 4}
  reference = str(tmp_path / "reference")
  train.train(make_tiny_config(**overrides), reference)

  config_file = tmp_path / "exp.py"
  config_file.write_text(
      f"import sys\nsys.path.insert(0, {TESTS_DIR!r})\n"
      "from tiny import make_tiny_config\n"
      f"def get_config(arg=None):\n  return make_tiny_config(**{overrides!r})\n")
  workdir = str(tmp_path / "killed")
  proc = subprocess.Popen([sys.executable, "-m", "xmodal.cli", "train",
                           f"--config={config_file}", f"--workdir={workdir}"],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  try:
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
      if max(_losses(workdir), default=0) >= 12:
        break
      time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
  finally:
    if proc.poll() is None:
      proc.kill()
  killed_at = max(_losses(workdir))
  assert 12 <= killed_at < 40

  train.train(make_tiny_config(**overrides), workdir)
  resumed, expected = _losses(workdir), _losses(reference)
  assert sorted(resumed) == list(range(1, 41))
  assert [resumed[s] for s in range(1, 41)] == [expected[s] for s in range(1, 41)]


def test_manifest_run_with_a_corrupt_image_trains_and_reports_the_skip(tmp_path):
  from PIL import Image
  rows = []
  for i in range(40):
    path = tmp_path / f"{i}.png"
    if i == 3:
      path.write_bytes(b"not a png at all")
    else:
      shape, colour = shapes.SHAPES[i % 5], list(shapes.COLOURS)[i % 6]
      Image.fromarray(shapes.render(shape, colour, "large", 1, 1, 16,
                                    np.random.default_rng(i))).save(path)
    rows.append({"image": path.name, "caption": f"a {list(shapes.COLOURS)[i % 6]} "
                                                f"{shapes.SHAPES[i % 5]}"})
  (tmp_path / "data.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
  workdir = str(tmp_path / "run")
  config = make_tiny_config(**{"data.source": "manifest", "train.total_steps": 6,
                               "data.train_manifest": str(tmp_path / "data.jsonl"),
                               "data.eval_manifest": str(tmp_path / "data.jsonl")})
  final = train.train(config, workdir)
  logged = [r for r in metrics_lib.read_jsonl(workdir) if "loss" in r]
  assert logged[-1]["data/skipped"] >= 4        # 6 steps x 32 rows = 4+ passes over row 3
  assert final["eval/skipped"] == 1 and final["eval/examples"] == 39
  assert "zeroshot/top1" not in final            # no labels, no class names: retrieval only


def test_captions_all_run_trains_with_group_positives(tmp_path, capsys):
  """data.captions="all" on a manifest with 2-3 captions per image: the copies of one
  record share batch["group"], the step uses them as positives, and the loss falls."""
  from PIL import Image
  from xmodal.data import pipeline
  colours = list(shapes.COLOURS)
  rows = []
  for i in range(30):
    shape, colour = shapes.SHAPES[i % 5], colours[i % 6]
    Image.fromarray(shapes.render(shape, colour, "large", 1, 1, 16,
                                  np.random.default_rng(i))).save(tmp_path / f"{i}.png")
    captions = [f"a {colour} {shape}", f"{shape}, {colour}", f"the {colour} one"]
    rows.append({"image": f"{i}.png", "caption": captions[:2 + i % 2]})
  (tmp_path / "data.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
  config = make_tiny_config(**{"data.source": "manifest", "data.captions": "all",
                               "train.total_steps": 12, "optim.lr": 3e-3,
                               "data.train_files": str(tmp_path / "data.jsonl"),
                               "data.eval_files": str(tmp_path / "data.jsonl")})
  groups = next(iter(pipeline.train_dataset(config)))["group"]
  assert len(np.unique(groups)) <= 16                 # 32 rows from 2-3 captions per image
  workdir = str(tmp_path / "run")
  final = train.train(config, workdir)
  assert "(group positives)" in capsys.readouterr().out
  losses = [r["loss"] for r in metrics_lib.read_jsonl(workdir) if "loss" in r]
  assert len(losses) == 12 and all(np.isfinite(losses))
  assert np.mean(losses[-4:]) < np.mean(losses[:4]) - 0.2, losses
  assert final["eval/examples"] == 30


_TERMS_CONFIG = """
import sys
sys.path.insert(0, {tests!r})
import ml_collections
import loss_cases
from tiny import make_tiny_config
from xmodal.losses import terms


def get_config(arg=None):
  c = make_tiny_config(**{{"data.source": "synthetic", "model.embed_dim": 16,
                          "train.total_steps": {steps}, "train.checkpoint_every": 4,
                          "train.log_every": 1, "optim.warmup_steps": 1,
                          "optim.end_lr_fraction": 1.0,      # the same lr whatever total_steps
                          "data.synthetic_eval_size": 64}})
  c.towers = loss_cases.vector_towers(x=dict(features=8, width=16),
                                      y=dict(features=8, width=16),
                                      tx=dict(features=8, width=16, input="x"))
  c.train.frozen = ("tx/.*",)
  c.loss.terms = ml_collections.ConfigDict({{
      "clip": terms.section("softmax", pairs=("x:y",)),
      "mod": terms.section("momentum", momentum=0.9, queue=64, pairs=("x:y",),
                           weight={weight}),
      "cw": terms.section("cwcl", reference="tx", soft="a", scale="own", pairs=("x:y",))}})
  return c
"""


@pytest.mark.slow
def test_loss_terms_train_from_the_cli_and_resume_exactly(tmp_path):
  """Three terms (CLIP, momentum distillation with a queue, CWCL with a frozen reference
  tower reading x's inputs, on its own scale) through `xmodal train`, a term's weight set
  on the command line; a run stopped at step 4 and resumed to step 8 ends with the same
  params, EMA copies and queue, bit for bit, and the same per-term losses as one
  uninterrupted run."""
  import importlib.util
  import jax
  import orbax.checkpoint as ocp
  from xmodal import checkpoint

  def config_file(steps, weight):
    path = tmp_path / f"exp{steps}_{weight}.py"
    path.write_text(_TERMS_CONFIG.format(tests=TESTS_DIR, steps=steps, weight=weight))
    return str(path)

  def load(path):
    spec = importlib.util.spec_from_file_location("exp", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()

  once, twice = str(tmp_path / "once"), str(tmp_path / "twice")
  subprocess.run([sys.executable, "-m", "xmodal.cli", "train", f"--config={config_file(8, 1.0)}",
                  f"--workdir={once}", "--config.loss.terms.mod.weight=0.5"], check=True,
                 stdout=subprocess.DEVNULL)
  train.train(load(config_file(4, 0.5)), twice)
  train.train(load(config_file(8, 0.5)), twice)
  rows = {w: {r["step"]: r for r in metrics_lib.read_jsonl(w) if "loss" in r}
          for w in (once, twice)}
  assert sorted(rows[twice]) == list(range(1, 9))
  for s in range(1, 9):
    for key in ("loss", "loss/clip", "loss/mod", "loss/cw", "scale/cw"):
      assert rows[twice][s][key] == rows[once][s][key], (s, key)
  first, last = rows[once][1], rows[once][8]
  np.testing.assert_allclose(last["loss"], last["loss/clip"] + 0.5 * last["loss/mod"]
                             + last["loss/cw"], rtol=1e-5)
  assert last["loss"] < first["loss"]
  states = []
  for w in (once, twice):
    ckpt = checkpoint.Checkpointer(w)
    states.append(ckpt.manager.restore(8, args=ocp.args.Composite(
        state=ocp.args.StandardRestore())).state)
    ckpt.close()
  leaves = [jax.tree_util.tree_leaves_with_path(s) for s in states]
  assert len(leaves[0]) == len(leaves[1])
  assert any("queue" in jax.tree_util.keystr(p) for p, _ in leaves[0])
  assert any("ema" in jax.tree_util.keystr(p) for p, _ in leaves[0])
  for (p, a), (_, b) in zip(*leaves):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=jax.tree_util.keystr(p))
  m = xmodal.load(once)                                # the term's own scale is a param too
  assert "logit_scale_cw" in m.params
  z = m.encode(x=np.ones((3, 8), np.float32), y=np.ones((3, 8), np.float32), tx=np.ones((3, 8), np.float32))
  assert z["x"].shape == (3, 16) and z["tx"].shape == (3, 16)


def test_captions_k_run_scores_each_image_against_its_k_captions(tmp_path):
  """data.captions="k" (1-to-K): the text tower embeds [B, 2] captions per image, the image
  once; every caption is a positive of its image; the loss falls."""
  from PIL import Image
  colours = list(shapes.COLOURS)
  rows = []
  for i in range(30):
    shape, colour = shapes.SHAPES[i % 5], colours[i % 6]
    Image.fromarray(shapes.render(shape, colour, "large", 1, 1, 16,
                                  np.random.default_rng(i))).save(tmp_path / f"{i}.png")
    rows.append({"image": f"{i}.png", "caption": [f"a {colour} {shape}", f"{shape}, {colour}",
                                                  f"the {colour} one"][:1 + i % 3]})
  (tmp_path / "data.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
  config = make_tiny_config(**{"data.source": "manifest", "data.captions": "k",
                               "data.num_captions": 2, "train.total_steps": 12,
                               "optim.lr": 3e-3, "data.train_files": str(tmp_path / "data.jsonl"),
                               "data.eval_files": str(tmp_path / "data.jsonl")})
  final = train.train(config, str(tmp_path / "run"))
  losses = [r["loss"] for r in metrics_lib.read_jsonl(str(tmp_path / "run")) if "loss" in r]
  assert len(losses) == 12 and all(np.isfinite(losses))
  assert np.mean(losses[-4:]) < np.mean(losses[:4]) - 0.2, losses
  assert final["eval/examples"] == 30
