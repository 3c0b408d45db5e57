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

pytestmark = pytest.mark.slow   # end-to-end / subprocess / torch parity

import xmodal
from xmodal import cli, config as config_lib, metrics as metrics_lib, train
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
  chance_r10 = 10 / final["retrieval/examples"]
  assert final["retrieval/image_to_text/R10"] > 2 * chance_r10, final
  assert final["zeroshot/top1"] > 2 * final["zeroshot/chance"], final


def test_run_writes_metrics_checkpoints_and_plots(trained):
  config, workdir, _ = trained
  rows = [r for r in metrics_lib.read_jsonl(workdir) if "run" not in r]   # not xmodal eval's
  first = rows[0]
  assert first["step"] == 1 and first["compile_time_s"] > 0
  logged = [r for r in rows if "loss" in r]
  for key in ("lr", "scale", "grad_norm", "examples_per_s", "steps_per_s", "eta_s",
              "step_time_s", "data_time_s", "data/skipped"):
    assert key in logged[-1], key
  # The wait for the next batch is part of the step.
  assert all(0 <= r["data_time_s"] <= r["step_time_s"] for r in logged)
  assert [r["step"] for r in rows if "zeroshot/top1" in r] == [40, 80]
  steps = sorted(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints")) if s.isdigit())
  assert steps == [60, 80]            # every 30 steps and at the end, newest 2 kept
  assert os.path.exists(os.path.join(workdir, "loss_curve.png"))
  assert os.path.exists(os.path.join(workdir, "similarity_80.png"))
  assert any(f.startswith("events.out.tfevents")
             for f in os.listdir(os.path.join(workdir, "tensorboard")))
  final = json.load(open(os.path.join(workdir, "final_metrics.json")))
  assert final["step"] == 80
  # TensorBoard holds every name of metrics.jsonl as written, at the same steps.
  from tensorboard.backend.event_processing import event_accumulator
  events = event_accumulator.EventAccumulator(os.path.join(workdir, "tensorboard"))
  events.Reload()
  tags = {t: [e.step for e in events.Scalars(t)] for t in events.Tags()["scalars"]}
  names = {k for r in rows for k in r if k not in ("step", "time")}
  assert "retrieval/image_to_text/R1" in names and "loss/image-text" in names
  assert set(tags) == names
  assert tags["zeroshot/top1"] == [40, 80]


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
  rows = [r for r in metrics_lib.read_jsonl(workdir) if "retrieval/image_to_text/R1" in r]
  again = rows[-1]
  for key in ("retrieval/image_to_text/R1", "retrieval/text_to_image/R5", "zeroshot/top1"):
    assert again[key] == pytest.approx(final[key], abs=1e-6), key


def _eval(capsys, workdir, *args):
  """`xmodal eval` in this process: (exit status, stderr, the row it added or None)."""
  before = len(metrics_lib.read_jsonl(workdir))
  code = cli.main(["xmodal", "eval", f"--workdir={workdir}", *args])
  rows = metrics_lib.read_jsonl(workdir)
  return code, capsys.readouterr().err, (rows[-1] if len(rows) > before else None)


def test_eval_scores_new_class_names_and_refuses_changes_to_the_model(trained, tmp_path,
                                                                      capsys):
  _, workdir, final = trained
  same, rolled = tmp_path / "same.txt", tmp_path / "rolled.txt"
  same.write_text("\n".join(shapes.CLASSNAMES))
  # Class i named as class i+6 (another colour and another shape): right answers score wrong.
  rolled.write_text("\n".join(shapes.CLASSNAMES[6:] + shapes.CLASSNAMES[:6]))
  code, _, row = _eval(capsys, workdir, f"--config.eval.classnames={same}")
  assert code == 0 and row["zeroshot/top1"] == pytest.approx(final["zeroshot/top1"], abs=1e-6)
  code, _, row = _eval(capsys, workdir, f"--config.eval.classnames={rolled}")
  assert code == 0 and row["zeroshot/top1"] < final["zeroshot/top1"] / 2, row
  assert row["retrieval/image_to_text/R1"] == pytest.approx(
      final["retrieval/image_to_text/R1"], abs=1e-6)          # retrieval is not prompts
  for flag, message in (
      ("--config.towers.image.width=8", "config.towers.image.width: would change the model"),
      ("--config.data.image_size=16", "config.data.image_size: would change the model"),
      ("--config.train.total_steps=5", "config.train.total_steps: is not an evaluation field"),
      ("--config.eval.clasnames=x.txt", "config.eval.clasnames: unknown key; did you mean "
                                        "config.eval.classnames?"),
      (f"--config.eval.classnames={tmp_path / 'none.txt'}", "config.eval.classnames: no such "
                                                              "file"),
      ("--config.eval.templates=('a photo',)", "config.eval.templates: 'a photo' has no '{}'")):
    code, err, row = _eval(capsys, workdir, flag)
    assert (code, row) == (2, None) and message in err and err.count("\n") == 1, err


def test_eval_takes_the_evaluation_fields_of_a_config_file(trained, tmp_path, capsys):
  config, workdir, final = trained
  path = tmp_path / "eval.py"
  path.write_text(
      f"import sys\nsys.path.insert(0, {TESTS_DIR!r})\nfrom tiny import make_tiny_config\n"
      f"def get_config(arg=None):\n"
      f"  c = make_tiny_config(**{{'data.image_size': 32, 'train.total_steps': 7}})\n"
      f"  c.eval.templates = ('{{}}',)\n"
      f"  c.model.embed_dim = int(arg or c.model.embed_dim)\n"
      f"  return c\n")
  # Same model, another prompt set (the bare class name) and training length (ignored).
  code, _, row = _eval(capsys, workdir, f"--config={path}")
  assert code == 0 and row["zeroshot/top1"] != pytest.approx(final["zeroshot/top1"], abs=1e-6)
  code, err, row = _eval(capsys, workdir, f"--config={path}:48")
  assert code == 2 and row is None
  assert f"config.model.embed_dim: {path}:48 has 48 but the run in {workdir} trained with " \
         f"{config.model.embed_dim}" in err


def test_eval_of_an_earlier_step_keeps_the_runs_own_tensorboard_history(trained, capsys):
  _, workdir, _ = trained
  code, _, row = _eval(capsys, workdir, "--step=60")
  assert code == 0 and row["step"] == 60 and row["run"] == "eval_step60"
  from tensorboard.backend.event_processing import event_accumulator
  def steps(path):
    events = event_accumulator.EventAccumulator(path)
    events.Reload()
    return [e.step for e in events.Scalars("zeroshot/top1")]
  assert steps(os.path.join(workdir, "tensorboard")) == [40, 80]
  assert steps(os.path.join(workdir, "tensorboard", "eval_step60")) == [60]
  code, err, _ = _eval(capsys, workdir, "--step=7")
  assert code == 2 and "no checkpoint of step 7" in err and "steps: 60, 80" in err


def test_a_start_that_fails_before_step_1_leaves_the_workdir_as_it_was(tmp_path):
  """Init from weights that match no parameter fails after the model is built; the
  corrected start then trains in the same workdir instead of being refused."""
  from safetensors.numpy import save_file
  save_file({"vision/other": np.zeros(3, np.float32)}, str(tmp_path / "w.safetensors"))
  workdir = tmp_path / "run"
  workdir.mkdir()                                      # an empty folder stays empty
  (workdir / "notes.txt").write_text("mine")
  bad = make_tiny_config(**{"init.source": str(tmp_path / "w.safetensors"),
                            "train.total_steps": 3})
  with pytest.raises(ValueError, match=r"^config.init.source: no source parameter") as err:
    train.train(bad, str(workdir))
  assert sorted(os.listdir(workdir)) == ["notes.txt"]
  assert isinstance(err.value, config_lib.ConfigError)      # one line from the command
  final = train.train(make_tiny_config(**{"train.total_steps": 3}), str(workdir))
  assert final["retrieval/examples"] > 0 and (workdir / "config.json").exists()


def test_frozen_random_weights_are_refused_before_anything_is_written(tmp_path):
  """A LiT-style freeze with no weights to load would train against a random tower."""
  config = make_tiny_config(**{"train.frozen": ("image/.*",)})
  with pytest.raises(config_lib.ConfigError,
                     match=r"^config.train.frozen: \d+ frozen weight matrices .* are not "
                           r"loaded from nothing \(config.init.source is empty\)"):
    train.train(config, str(tmp_path / "run"))
  assert not (tmp_path / "run").exists()


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
  assert final["retrieval/skipped"] == 1 and final["retrieval/examples"] == 39
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
  assert final["retrieval/examples"] == 30
