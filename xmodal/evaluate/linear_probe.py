"""Linear probe: multinomial logistic regression on frozen embeddings (CLIP's evaluation).

For features X [N, D] and labels y [N] in 0..C-1, minimises over W [D, C], b [C]

    mean_i CE(softmax(x_i W + b), y_i) + l2 / 2 * ||W||^2          (b not penalised)

with L-BFGS (optax) to a gradient tolerance, full batch, jitted. This is scikit-learn's
`LogisticRegression(C=1 / (l2 * N))` objective (its `C * sum(CE) + ||W||^2 / 2`, scaled),
so the two agree; the regularisation strength is chosen by a sweep on a validation split
(the CLIP paper sweeps 1e-6..1e6 log-spaced), then the probe is refitted on train +
validation at the chosen strength and scored on the test split.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

DEFAULT_L2 = tuple(float(x) for x in np.logspace(-6, 2, 9))


def _loss(params, x, y, l2):
  logits = x @ params["w"] + params["b"]
  ce = jnp.mean(jax.nn.logsumexp(logits, axis=1) - jnp.take_along_axis(
      logits, y[:, None], axis=1)[:, 0])
  return ce + 0.5 * l2 * jnp.sum(params["w"] ** 2)


@functools.partial(jax.jit, static_argnames=("num_classes", "max_iter"))
def fit(x, y, l2: float, num_classes: int, max_iter: int = 500, tol: float = 1e-6):
  """x [N, D] float, y [N] int -> {"w": [D, C], "b": [C]} minimising the objective above."""
  x = jnp.asarray(x, jnp.float32)
  y = jnp.asarray(y, jnp.int32)
  params = {"w": jnp.zeros((x.shape[1], num_classes), jnp.float32),
            "b": jnp.zeros((num_classes,), jnp.float32)}
  f = functools.partial(_loss, x=x, y=y, l2=l2)
  opt = optax.lbfgs()
  value_and_grad = optax.value_and_grad_from_state(f)

  def step(carry):
    params, state, _, i = carry
    value, grad = value_and_grad(params, state=state)
    updates, state = opt.update(grad, state, params, value=value, grad=grad, value_fn=f)
    return optax.apply_updates(params, updates), state, optax.tree.norm(grad), i + 1

  def running(carry):
    _, _, grad_norm, i = carry
    return (i < max_iter) & (grad_norm > tol)

  init = (params, opt.init(params), jnp.asarray(jnp.inf, jnp.float32), 0)
  params, *_ = jax.lax.while_loop(running, step, init)
  return params


def accuracy(params, x, y) -> float:
  pred = np.argmax(np.asarray(x, np.float32) @ np.asarray(params["w"]) + np.asarray(params["b"]),
                   axis=1)
  return float(np.mean(pred == np.asarray(y)))


def sweep(train_x, train_y, val_x, val_y, test_x, test_y, num_classes: int,
          l2_values=DEFAULT_L2) -> dict:
  """Chooses l2 on the validation split, refits on train + validation, scores the test
  split. -> {"top1": test accuracy, "l2": chosen, "val_top1": best validation accuracy}."""
  scores = [accuracy(fit(train_x, train_y, l2, num_classes), val_x, val_y) for l2 in l2_values]
  best = int(np.argmax(scores))   # ties: the first, i.e. the weakest regularisation tried
  x = np.concatenate([train_x, val_x])
  y = np.concatenate([train_y, val_y])
  params = fit(x, y, l2_values[best], num_classes)
  return {"top1": accuracy(params, test_x, test_y), "l2": float(l2_values[best]),
          "val_top1": float(scores[best])}
