"""Group terms (losses/groups.py, losses/terms.py): a term over a group of towers 'a:b:c'
sums its parts and logs each, defaults to one group of every tower, evaluation retrieves
along every pair within a group, and validation names a bad group or a queue."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import loss_cases
from xmodal import config as config_lib, losses, parallel
from xmodal.fields import ConfigError
from xmodal.losses import groups, objectives, terms


def _config(**opts):
  c = loss_cases.vector_config("symile", **opts)
  c.loss.terms.clip = terms.section("softmax", pairs=("x:y",))
  return c


def test_group_term_sums_its_parts_and_logs_them():
  c = _config()
  mesh = parallel.make_mesh(c, jax.devices()[:1])
  k = jax.random.split(jax.random.key(0), 4)
  emb = {t: loss_cases.unit(kk, (40, 16)) for t, kk in zip("xyz", k)}
  params = {"logit_scale": jnp.log(jnp.float32(9.0))}
  total, (metrics, _) = losses.Objective(c, mesh).loss(params, emb, {"rng": k[3]})
  symile = metrics["loss/symile"]
  np.testing.assert_allclose(symile, metrics["loss/symile/x-y-z"], rtol=1e-6)
  parts = [metrics[f"loss/symile/x-y-z/anchor_{t}"] for t in "xyz"]
  np.testing.assert_allclose(symile, np.mean(parts), rtol=1e-6)
  np.testing.assert_allclose(total, symile + metrics["loss/clip"], rtol=1e-6)


def test_default_group_and_evaluated_pairs():
  c = loss_cases.vector_config("gram", pairs=())
  [term] = terms.resolve(c)
  assert term.pairs == (("x", "y", "z"),)
  assert config_lib.loss_pairs(c) == [("x", "y"), ("x", "z"), ("y", "z")]


@pytest.mark.parametrize("pairs, match", [(("x:x:y",), "two or more different"),
                                          (("x:y:w",), "two or more different"),
                                          (("x",), "two or more different")])
def test_bad_groups_are_named(pairs, match):
  c = loss_cases.vector_config("mv_infonce", pairs=pairs)
  with pytest.raises(ConfigError, match=r"loss\.terms\.mv_infonce\.pairs: .*" + match):
    terms.check(c)


def test_pair_objectives_still_take_pairs_only():
  c = loss_cases.vector_config("softmax", pairs=("x:y:ref",))
  with pytest.raises(ConfigError, match=r"loss\.terms\.softmax\.pairs: 'x:y:ref' must be 'a:b'"):
    terms.check(c)


def test_no_queue_on_a_group_term():
  c = loss_cases.vector_config("binding", queue=80)
  with pytest.raises(ConfigError, match=r"loss\.terms\.binding\.queue: .*group of towers"):
    terms.check(c)


def test_group_objectives_are_registered():
  assert {n for n in objectives.names() if groups.is_group(objectives.get(n))} >= {
      "binding", "symile", "gram", "mv_infonce", "mv_dhel"}


def test_uniformity_takes_a_single_tower():
  terms.check(loss_cases.vector_config("uniformity", pairs=("x",)))
  with pytest.raises(ConfigError, match=r"'a\[:b\.\.\.\]' with one or more"):
    terms.check(loss_cases.vector_config("uniformity", pairs=("x:x",)))
