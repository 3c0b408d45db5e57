"""Which tasks run when, how their metrics are named, and a training run with three tasks on
different data at different cadences writing them all to metrics.jsonl and TensorBoard."""

import json

import jax
import numpy as np
import pytest

from xmodal import metrics as metrics_lib, parallel
from xmodal.data import shapes
from xmodal.evaluate import harness, kinds
from xmodal.models import model as model_lib
from tiny import make_tiny_config


def _evaluation(config):
  model = model_lib.MultiTower(config)
  return harness.Evaluation(config, model, parallel.make_mesh(config)), model


def test_each_task_runs_at_its_own_cadence_and_all_at_the_end():
  config = make_tiny_config(**{"train.eval_every": 5})
  with config.unlocked():
    config.eval.tasks.fast = kinds.new("retrieval", every=3)
  evaluation, _ = _evaluation(config)
  assert evaluation.due(3) == ["fast"]
  default = ["geometry", "joint", "retrieval", "zeroshot"]     # every=0: train.eval_every
  assert evaluation.due(5) == default
  assert evaluation.due(15) == sorted(["fast"] + default)
  assert evaluation.due(7) == [] and evaluation.run_due(7, None) is None
  assert evaluation.due(7, final=True) == sorted(["fast"] + default)
  with config.unlocked():
    config.train.eval_every = 0                                   # only at the end
  assert _evaluation(config)[0].due(5) == []


def test_metrics_are_named_by_task_and_non_finite_embeddings_are_misses():
  """The default tasks on a model whose every weight is NaN: no retrieval hit and no
  zero-shot hit (a NaN model once scored R@1 = 1.0), every row counted as non-finite."""
  config = make_tiny_config(**{"data.shapes_eval_size": 40})
  evaluation, model = _evaluation(config)
  params = model_lib.unbox(jax.jit(model.init)(jax.random.key(0),
                                               model_lib.dummy_inputs(config))["params"])
  out = evaluation.run(jax.tree.map(lambda x: x * np.nan, params), 3)
  assert {k.split("/")[0] for k in out} == {"retrieval", "zeroshot", "geometry", "eval"}
  assert all(metrics_lib.TAG.fullmatch(k) for k in out)
  assert out["retrieval/image_to_text/R1"] == out["retrieval/text_to_image/R10"] == 0.0
  assert out["retrieval/image_to_text/mean_rank"] == 41.0        # a miss ranks past the end
  assert out["zeroshot/top1"] == out["zeroshot/top5"] == 0.0
  assert out["eval/nonfinite"] == 80 and out["retrieval/examples"] == 40
  assert out["eval/time_s"] > 0


def test_the_default_zeroshot_task_reports_nothing_where_it_does_not_apply(tmp_path):
  """A manifest without labels: retrieval only, as before tasks existed; a zero-shot task
  that asks for class names and gets rows without labels is an error naming it."""
  from PIL import Image
  rows = []
  for i in range(12):
    Image.fromarray(shapes.render(shapes.SHAPES[i % 5], "red", "large", 1, 1, 16,
                                  np.random.default_rng(i))).save(tmp_path / f"{i}.png")
    rows.append({"image": f"{i}.png", "caption": f"a red {shapes.SHAPES[i % 5]}"})
  (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
  (tmp_path / "names.txt").write_text("a\nb\n")
  config = make_tiny_config(**{"data.source": "manifest",
                               "data.train_files": str(tmp_path / "m.jsonl"),
                               "data.eval_files": str(tmp_path / "m.jsonl")})
  evaluation, model = _evaluation(config)
  params = model_lib.unbox(jax.jit(model.init)(jax.random.key(0),
                                               model_lib.dummy_inputs(config))["params"])
  out = evaluation.run(params, 1)
  assert "retrieval/image_to_text/R1" in out and not any(k.startswith("zeroshot") for k in out)
  evaluation.tasks["zeroshot"].classnames = str(tmp_path / "names.txt")
  with pytest.raises(kinds.TaskError, match=r"^config.eval.tasks.zeroshot: 12 of 12 rows have "
                                            r"no label"):
    evaluation.run(params, 2, ["zeroshot"])


@pytest.mark.slow
def test_a_run_with_three_tasks_on_different_data_and_cadences(tmp_path):
  """Retrieval + zero-shot on the held-out split every 6 steps (train.eval_every), a kNN
  probe on a smaller held-out split every 4, COCO-style retrieval on a manifest every 3:
  each at its steps and at the end, in metrics.jsonl and TensorBoard under the same names."""
  from PIL import Image
  from xmodal import train
  colours = list(shapes.COLOURS)
  rows = []
  for i in range(20):
    Image.fromarray(shapes.render(shapes.SHAPES[i % 5], colours[i % 6], "large", 1, 1, 16,
                                  np.random.default_rng(i))).save(tmp_path / f"{i}.png")
    rows.append({"image": f"{i}.png", "caption": [f"a {colours[i % 6]} {shapes.SHAPES[i % 5]}",
                                                  f"{shapes.SHAPES[i % 5]}"]})
  (tmp_path / "coco.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
  config = make_tiny_config(**{"train.total_steps": 12, "train.eval_every": 6,
                               "train.log_every": 4, "train.checkpoint_every": 12})
  with config.unlocked():
    config.eval.tasks.knn = kinds.new("knn", every=4, k=5, train_examples=64,
                                      data=dict(shapes_eval_size=40))
    config.eval.tasks.coco = kinds.new("retrieval", every=3, captions="all",
                                       data=dict(eval_source="manifest",
                                                 eval_files=str(tmp_path / "coco.jsonl")))
  workdir = str(tmp_path / "run")
  final = train.train(config, workdir)
  steps = {}
  for row in metrics_lib.read_jsonl(workdir):
    for key in row:
      steps.setdefault(key, []).append(row["step"])
  assert steps["retrieval/image_to_text/R1"] == [6, 12]
  assert steps["zeroshot/top1"] == [6, 12]
  assert steps["knn/top1"] == [4, 8, 12]
  assert steps["coco/image_to_text/R1"] == steps["coco/text_to_image/median_rank"] == [3, 6, 9,
                                                                                      12]
  assert final["knn/examples"] == 40 and final["coco/examples"] == 20
  assert final["retrieval/examples"] == 128
  from tensorboard.backend.event_processing import event_accumulator
  events = event_accumulator.EventAccumulator(f"{workdir}/tensorboard")
  events.Reload()
  tags = {t: [e.step for e in events.Scalars(t)] for t in events.Tags()["scalars"]}
  for name in ("retrieval/image_to_text/R1", "knn/top1", "coco/image_to_text/R1",
               "eval/nonfinite"):
    assert tags[name] == steps[name], name
