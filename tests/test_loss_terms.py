"""loss.terms (losses/terms.py): the one-term case is the old `loss.name`, terms compose
with their weights and scales, each term's value is logged, and validation names the field
of a term that cannot run."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

import loss_cases
from tiny import make_tiny_config
from xmodal import config as config_lib, losses, parallel
from xmodal.losses import terms
from xmodal.models import model as model_lib


def _mesh():
  return parallel.make_mesh(make_tiny_config(**{"mesh.data": 1}), jax.devices()[:1])


def test_loss_name_is_the_one_term_case():
  c = make_tiny_config(**{"loss.name": "sigmoid", "loss.impl": "dense"})
  [term] = terms.resolve(c)
  assert (term.objective, term.weight, term.pairs, term.scale) == (
      "sigmoid", 1.0, (("image", "text"),), "shared")
  values = terms.scalars(c)
  np.testing.assert_allclose([np.exp(values["logit_scale"]), values["logit_bias"]], [10, -10])
  emb = {m: loss_cases.unit(jax.random.key(i), (8, 4)) for i, m in enumerate(("image", "text"))}
  total, metrics = losses.make_objective(c, _mesh())(
      {"logit_scale": jnp.log(10.0), "logit_bias": jnp.float32(-10.0)}, emb)
  assert list(metrics) == ["loss/image-text"]
  np.testing.assert_allclose(total, losses.dense_loss("sigmoid", emb["image"], emb["text"],
                                                      10.0, -10.0), rtol=1e-6)


def _two_terms():
  c = make_tiny_config(**{"loss.impl": "dense"})
  c.loss.terms = ml_collections.ConfigDict({
      "clip": terms.section("softmax"),
      "sig": terms.section("sigmoid", weight=0.5, scale="own", label_smoothing=0.1)})
  return c


def test_terms_compose_with_own_scales():
  c = _two_terms()
  config_lib.validate(c, 1)
  params = model_lib.unbox(model_lib.MultiTower(c).init(
      jax.random.key(0), model_lib.dummy_inputs(c))["params"])
  assert {k for k in params if k.startswith("logit")} == {
      "logit_scale", "logit_scale_sig", "logit_bias_sig"}
  np.testing.assert_allclose(np.exp(params["logit_scale"]), 1 / 0.07, rtol=1e-6)
  np.testing.assert_allclose([np.exp(params["logit_scale_sig"]), params["logit_bias_sig"]],
                             [10.0, -10.0], rtol=1e-6)
  emb = {m: loss_cases.unit(jax.random.key(i), (8, 4)) for i, m in enumerate(("image", "text"))}
  params = {"logit_scale": jnp.log(12.0), "logit_scale_sig": jnp.log(5.0),
            "logit_bias_sig": jnp.float32(-2.0)}
  total, metrics = losses.make_objective(c, _mesh())(params, emb)
  ctx = loss_cases.context({"x": emb["image"], "y": emb["text"]})
  clip = loss_cases.dense("softmax", loss_cases.options("softmax"), ctx, 12.0)
  sig = loss_cases.dense("sigmoid", loss_cases.options("sigmoid", label_smoothing=0.1), ctx,
                         5.0, -2.0)
  np.testing.assert_allclose([metrics["loss/clip"], metrics["loss/sig"]], [clip, sig], rtol=1e-6)
  np.testing.assert_allclose(total, clip + 0.5 * sig, rtol=1e-6)
  np.testing.assert_allclose(metrics["scale/sig"], 5.0, rtol=1e-6)
  # each term's scale gets only its own term's gradient
  grads = jax.grad(lambda p: losses.make_objective(c, _mesh())(p, emb)[0])(params)
  g_clip = jax.grad(lambda s: loss_cases.dense("softmax", loss_cases.options("softmax"), ctx,
                                               jnp.exp(s)))(jnp.log(12.0))
  np.testing.assert_allclose(grads["logit_scale"], g_clip, rtol=1e-5)


def test_parse_builds_terms():
  spec = terms.parse("softmax + 0.5*distill + 0.25 * softmax")
  assert {k: spec[k].weight for k in spec} == {"softmax": 1.0, "distill": 0.5, "softmax_2": 0.25}
  assert spec.softmax_2.objective == "softmax"
  assert spec.distill.teacher_scale == (100.0,)
  with pytest.raises(config_lib.ConfigError, match=r"config\.loss\.terms: 'clipp'"):
    terms.parse("clipp")


@pytest.mark.parametrize("edit, message", [
    (lambda c: c.loss.terms.sig.update(objective="sigmoidd"),
     r"config\.loss\.terms\.sig\.objective: 'sigmoidd' is not one of"),
    (lambda c: c.loss.terms.sig.update(label_smoothin=0.1),
     r"config\.loss\.terms\.sig\.label_smoothin: unknown key; did you mean config\.loss\.terms\.sig\.label_smoothing\?"),
    (lambda c: c.loss.terms.sig.update(weight=-1.0), r"config\.loss\.terms\.sig\.weight: must be >= 0"),
    (lambda c: c.loss.terms.sig.update(pairs=("image:audio",)),
     r"config\.loss\.terms\.sig\.pairs: 'image:audio'"),
    (lambda c: c.loss.terms.sig.update(queue=64), r"config\.loss\.terms\.sig\.queue: only softmax"),
    (lambda c: c.loss.terms.clip.update(queue=48), r"config\.loss\.terms\.clip\.queue: 48 is not a multiple"),
    (lambda c: c.loss.update(name="sigmoid"), r"config\.loss\.name: 'sigmoid' is not used when loss\.terms"),
])
def test_validation_names_the_field(edit, message):
  c = _two_terms()
  edit(c)
  with pytest.raises(config_lib.ConfigError, match=message):
    config_lib.validate(c, 1)


def test_one_term_objective_that_needs_options_says_to_declare_a_term():
  c = make_tiny_config(**{"loss.name": "cwcl"})
  with pytest.raises(config_lib.ConfigError, match=r"config\.loss\.name: 'cwcl' at its defaults "
                                                   r"cannot run .*loss\.terms\.cwcl"):
    config_lib.validate(c, 1)


def test_queue_must_be_whole_batches():
  c = _two_terms()
  c.loss.terms.clip.queue = 2 * c.batch_size
  config_lib.validate(c, 1)
