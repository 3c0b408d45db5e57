"""Peer parity: xmodal's softmax / sigmoid losses (dense, gathered and ring) equal open_clip's
ClipLoss / SigLipLoss in value and gradients, against fixtures stored by
tools/make_openclip_fixtures.py (float64 torch; this test needs no torch)."""

import os

if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from xmodal import losses  # noqa: E402

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "openclip_losses.npz")
NAMES = {"clip": "softmax", "siglip": "sigmoid"}


def _cases():
  data = np.load(FIXTURES)
  cases = []
  for i in range(int(data["num_cases"])):
    case = {k[len(f"case{i}_"):]: data[k] for k in data.files if k.startswith(f"case{i}_")}
    cases.append(pytest.param(case, id=f"{case['name']}{i}"))
  return cases


def _impls(n_devices):
  devices = jax.devices()[:n_devices]
  mesh = jax.make_mesh((n_devices, 1, 1), ("data", "fsdp", "model"),
                       axis_types=(jax.sharding.AxisType.Auto,) * 3, devices=devices)
  return {"dense": lambda name: losses.pair_loss_fn(name, "dense", None),
          "gathered": lambda name: losses.pair_loss_fn(name, "gathered", mesh),
          "ring": lambda name: losses.pair_loss_fn(name, "ring", mesh, tile_size=3)}


def _rel(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30)


@pytest.mark.parametrize("case", _cases())
@pytest.mark.parametrize("impl", ["dense", "gathered", "ring"])
def test_matches_openclip(case, impl):
  n = 8 if len(jax.devices()) >= 8 else 1
  name = NAMES[str(case["name"])]
  f = _impls(n)[impl](name)
  x, y = jnp.asarray(case["x"], jnp.float32), jnp.asarray(case["y"], jnp.float32)
  scale, bias = jnp.float32(case["scale"]), jnp.float32(case["bias"])
  value, grads = jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2, 3)))(x, y, scale, bias)
  assert _rel(value, case["loss"]) <= 1e-5, (float(value), float(case["loss"]))
  for label, got in zip(("x", "y", "scale", "bias"), grads):
    want = case[f"grad_{label}"]
    if label == "bias" and name == "softmax":   # ClipLoss has no bias here
      assert float(got) == 0.0
      continue
    # The ring rescales its running sums tile by tile (3-column tiles here): one more
    # float32 rounding per tile, 1.15e-5 on the confident CLIP case (scale 100, loss 0.014).
    tol = 2e-5 if impl == "ring" else 1e-5
    assert _rel(got, want) <= tol, (label, _rel(got, want))


# ----------------------------------------------------------------------------- DistillClipLoss

DISTILL = os.path.join(os.path.dirname(__file__), "fixtures", "openclip_distill.npz")


def _distill_cases():
  data = np.load(DISTILL)
  return [pytest.param({k[len(f"case{i}_"):]: data[k] for k in data.files
                        if k.startswith(f"case{i}_")}, id=f"distill{i}")
          for i in range(int(data["num_cases"]))]


@pytest.mark.parametrize("case", _distill_cases())
@pytest.mark.parametrize("impl", ["dense", "gathered", "ring"])
def test_distill_terms_match_openclip_distill_clip_loss(case, impl):
  """loss.terms = {clip: softmax, distill: distill with the teacher's towers}: each term's
  value is open_clip's (contrastive_loss, distill_loss), and the gradients of their sum and
  of the distillation term alone w.r.t. the student's features and scale are its."""
  import loss_cases                                          # noqa: PLC0415
  from xmodal.losses import terms                            # noqa: PLC0415
  import ml_collections                                      # noqa: PLC0415
  n = 8 if len(jax.devices()) >= 8 else 1
  mesh = jax.make_mesh((n, 1, 1), ("data", "fsdp", "model"),
                       axis_types=(jax.sharding.AxisType.Auto,) * 3, devices=jax.devices()[:n])
  x, y = jnp.asarray(case["x"], jnp.float32), jnp.asarray(case["y"], jnp.float32)
  config = loss_cases.vector_config(impl=impl, batch=x.shape[0], dim=x.shape[1])
  config.loss.terms = ml_collections.ConfigDict({
      "clip": terms.section("softmax"),
      "distill": terms.section("distill", teacher="tx:ty",
                               teacher_scale=(float(case["teacher_scale"]),))})
  objective = losses.Objective(config, mesh)
  extras = {"frozen": {"tx": jnp.asarray(case["tx"], jnp.float32),
                       "ty": jnp.asarray(case["ty"], jnp.float32)}}

  def run(params, x, y, part):
    loss, (metrics, _) = objective.loss(params, {"x": x, "y": y}, extras)
    return (loss if part == "total" else metrics["loss/distill"]), metrics

  params = {"logit_scale": jnp.log(jnp.float32(case["scale"]))}
  for part in ("total", "distill"):
    (_, metrics), grads = jax.jit(jax.value_and_grad(
        lambda p, a, b: run(p, a, b, part), argnums=(0, 1, 2), has_aux=True))(params, x, y)
    assert _rel(metrics["loss/clip"], case["contrastive"]) <= 1e-5
    assert _rel(metrics["loss/distill"], case["distill"]) <= 1e-5
    dscale = grads[0]["logit_scale"] / case["scale"]          # d/d log-scale -> d/d scale
    for label, got in (("x", grads[1]), ("y", grads[2]), ("scale", dscale)):
      want = case[f"{part}_grad_{label}"]
      assert _rel(got, want) <= 1e-5, (part, label, _rel(got, want))
