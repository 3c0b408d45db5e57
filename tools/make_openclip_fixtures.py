"""Writes tests/fixtures/openclip_losses.npz: inputs, loss values and gradients of open_clip's
`ClipLoss` and `SigLipLoss`, for `tests/test_openclip_parity.py` (which needs no torch).

Dev-only dependencies (never runtime ones; see the `fixtures` extra in pyproject.toml):

    pip install torch==2.13.0
    pip install open-clip-torch --no-deps
    python tools/make_openclip_fixtures.py

`import open_clip` needs a matching torchvision, so only its `loss.py` is loaded, on its own,
through `importlib.util.spec_from_file_location`. Everything is computed in float64.
"""

import argparse
import importlib.metadata
import importlib.util
import os

import numpy as np
import torch


def load_openclip_loss():
  spec = importlib.util.find_spec("open_clip")
  if spec is None or not spec.submodule_search_locations:
    raise SystemExit("open_clip is not installed: pip install open-clip-torch --no-deps")
  path = os.path.join(list(spec.submodule_search_locations)[0], "loss.py")
  module_spec = importlib.util.spec_from_file_location("openclip_loss", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module


def unit(rng, shape):
  x = rng.standard_normal(shape)
  return x / np.linalg.norm(x, axis=1, keepdims=True)


def confident(rng, batch, dim, margin):
  """x, y [batch, dim >= 2 * batch] unit rows with x_i . y_i ~ margin and x_i . y_j ~ 1e-3:
  at scale 100 (bias -16.5) the loss is ~0.02 while logits are ~10-20, where float32
  shortcuts (a loss as the difference of large terms) lose digits."""
  q = np.linalg.qr(rng.standard_normal((dim, dim)))[0]
  x = q[:batch] + 0.03 * unit(rng, (batch, dim))
  y = margin * q[:batch] + np.sqrt(1 - margin ** 2) * q[batch:2 * batch] + 0.03 * unit(
      rng, (batch, dim))
  return (x / np.linalg.norm(x, axis=1, keepdims=True),
          y / np.linalg.norm(y, axis=1, keepdims=True))


# (name, batch, dim, scale, bias, margin): open_clip's losses take the scale itself (the
# model passes logit_scale.exp()); bias is used by SigLipLoss only. margin: None = random
# unit rows, else `confident` rows with that positive similarity.
CASES = [
    ("clip", 16, 8, 1 / 0.07, None, None),
    ("clip", 24, 12, 100.0, None, None),
    ("siglip", 16, 8, 10.0, -10.0, None),
    ("siglip", 24, 12, 3.0, 1.5, None),
    ("clip", 32, 64, 100.0, None, 0.08),         # confident: loss ~0.02
    ("siglip", 32, 64, 100.0, -16.5, 0.2),
]


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "tests",
                                                    "fixtures", "openclip_losses.npz"))
  args = parser.parse_args()
  loss_module = load_openclip_loss()
  rng = np.random.default_rng(0)
  arrays = {"openclip_version": np.array(importlib.metadata.version("open_clip_torch")),
            "torch_version": np.array(torch.__version__)}
  for i, (name, batch, dim, scale, bias, margin) in enumerate(CASES):
    if margin is None:
      x, y = unit(rng, (batch, dim)), unit(rng, (batch, dim))
    else:
      x, y = confident(rng, batch, dim, margin)
    # The tests feed float32 embeddings: the reference sees exactly those values.
    x, y = x.astype(np.float32).astype(np.float64), y.astype(np.float32).astype(np.float64)
    tx = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    ty = torch.tensor(y, dtype=torch.float64, requires_grad=True)
    ts = torch.tensor(scale, dtype=torch.float64, requires_grad=True)
    if name == "clip":
      loss = loss_module.ClipLoss()(tx, ty, ts)
      tb = None
    else:
      tb = torch.tensor(bias, dtype=torch.float64, requires_grad=True)
      loss = loss_module.SigLipLoss()(tx, ty, ts, tb)
    loss.backward()
    prefix = f"case{i}_"
    arrays.update({
        prefix + "name": np.array(name), prefix + "x": x, prefix + "y": y,
        prefix + "scale": np.array(scale), prefix + "bias": np.array(bias or 0.0),
        prefix + "loss": np.array(loss.item()), prefix + "grad_x": tx.grad.numpy(),
        prefix + "grad_y": ty.grad.numpy(), prefix + "grad_scale": np.array(ts.grad.item()),
        prefix + "grad_bias": np.array(tb.grad.item() if tb is not None else 0.0),
    })
  arrays["num_cases"] = np.array(len(CASES))
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  np.savez(args.out, **arrays)
  print(f"wrote {len(CASES)} cases to {os.path.abspath(args.out)} "
        f"(open_clip {arrays['openclip_version']}, torch {arrays['torch_version']})")


if __name__ == "__main__":
  main()
