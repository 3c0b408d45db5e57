"""Intra-modal views term (objectives/views.py): SimCLR's NT-Xent between two views in
float64 numpy, the pipeline's second view (data.views) is an independent crop of the same
image, and validation names data.views."""

import os

import jax
import ml_collections
import numpy as np
import pytest

import loss_cases
from tiny import make_tiny_config
from xmodal.data import pipeline
from xmodal.fields import ConfigError
from xmodal.losses import groups, objectives, terms

VIEWS = objectives.get("views")
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_is_nt_xent_between_the_views():
  k = jax.random.split(jax.random.key(0), 2)
  u, v = loss_cases.unit(k[0], (7, 5)), loss_cases.unit(k[1], (7, 5))
  got = groups.dense(VIEWS, loss_cases.options("views"),
                     loss_cases.context({"x": u, "x:view": v}), ("x",), 10.0)
  z = np.concatenate([np.asarray(u, np.float64), np.asarray(v, np.float64)])
  s = 10.0 * z @ z.T
  np.fill_diagonal(s, -1e9)
  n = len(u)
  want = np.mean([loss_cases.ce(s[r], np.eye(2 * n)[(r + n) % (2 * n)]) for r in range(2 * n)])
  np.testing.assert_allclose(got, want, rtol=1e-5)


def _shapes_config(**kw):
  c = make_tiny_config(**{"data.source": "shapes", "data.crop_scale": (0.3, 0.6), **kw})
  c.loss.terms = ml_collections.ConfigDict({
      "clip": terms.section("softmax"),
      "views": terms.section("views", pairs=("image",), scale="own")})
  return c


def test_pipeline_gives_a_second_augmented_view():
  config = _shapes_config(**{"data.views": ("image",)})
  batch = next(iter(pipeline.train_dataset(config)))          # one batch of 32
  a, b = np.asarray(batch["image"]), np.asarray(batch["image:view"])
  assert a.shape == b.shape == (32, 16, 16, 3)
  assert np.mean(np.abs(a.astype(float) - b)) > 5            # different crops
  plain = next(iter(pipeline.train_dataset(_shapes_config())))
  assert "image:view" not in plain
  np.testing.assert_array_equal(plain["image"], a)           # the first view is unchanged


def test_validation_names_data_views():
  with pytest.raises(ConfigError, match=r"views needs config\.data\.views"):
    terms.check(_shapes_config())
  with pytest.raises(ConfigError, match=r"config\.data\.views: 'text'"):
    terms.check(_shapes_config(**{"data.views": ("text",)}))
  terms.check(_shapes_config(**{"data.views": ("image",)}))


@pytest.mark.slow
def test_clip_plus_views_trains_from_the_cli(tmp_path):
  """`xmodal train` on shapes with data.views=('image',) and loss terms CLIP + views (own
  scale): both terms are logged and fall."""
  import subprocess
  import sys
  from xmodal import metrics as metrics_lib
  work = str(tmp_path / "run")
  subprocess.run([sys.executable, "-m", "xmodal.cli", "train",
                  "--config=configs/terms.py:softmax + views", f"--workdir={work}",
                  "--config.data.views=('image',)", "--config.loss.terms.views.pairs=('image',)",
                  "--config.loss.terms.views.scale=own", "--config.train.total_steps=30",
                  "--config.optim.warmup_steps=3",
                  "--config.train.eval_every=0", "--config.train.log_every=1",
                  "--config.batch_size=32", "--config.data.image_size=32",
                  "--config.model.embed_dim=32"],
                 check=True, stdout=subprocess.DEVNULL, cwd=_ROOT)
  rows = [r for r in metrics_lib.read_jsonl(work) if "loss" in r]
  for key in ("loss/softmax", "loss/views"):
    first, last = np.mean([r[key] for r in rows[:5]]), np.mean([r[key] for r in rows[-5:]])
    assert last < first, (key, first, last)
  assert "scale/views" in rows[-1]


