"""Where metrics go: stdout, `metrics.jsonl` in the workdir, TensorBoard event files
(tensorboardX) and PNG plots (loss curve, similarity matrix). Only process 0 writes.

Metric names are TensorBoard tags as written: letters, digits and `_ - . /` only
("retrieval/image_to_text/R1", "loss/image-text"), since TensorBoard writers replace any
other character with "_" (`retrieval/image->text/R@1` showed as `retrieval/image-_text/R_1`).
Rows of older runs are read under the current names (`read_jsonl`).
"""

import json
import logging
import os
import re
import sys
import time

import jax
import numpy as np
import tqdm

# The characters a TensorBoard tag keeps (tensorboardX / tf.summary rename the rest).
TAG = re.compile(r"[\w./-]+")


class MetricWriter:
  """One stdout line, one metrics.jsonl row and TensorBoard scalars per `write`.

  `run` names a TensorBoard run of its own, `tensorboard/<run>` (and marks the JSONL rows
  "run": <run>): `xmodal eval` writes there, because TensorBoard drops a run's points past
  any step that comes again lower in the same run. Nothing is created in the workdir before
  the first write."""

  def __init__(self, workdir: str, run: str | None = None):
    self.workdir, self.run = workdir, run
    self.enabled = jax.process_index() == 0
    self._tb = None

  def write(self, step: int, metrics: dict, prefix_line: str = "") -> None:
    """Scalars for one step: one stdout line, one JSONL row, TensorBoard scalars."""
    if not self.enabled:
      return
    scalars = {k: float(v) for k, v in metrics.items()}
    renamed = [k for k in scalars if not TAG.fullmatch(k)]
    if renamed:
      raise ValueError(f"metric names {renamed} would be renamed by TensorBoard; use "
                       f"letters, digits and _ - . / only")
    shown = " ".join(f"{k}={_fmt(v)}" for k, v in scalars.items())
    tqdm.tqdm.write(f"[step {step}] {prefix_line}{shown}", file=sys.stdout)  # above a bar
    sys.stdout.flush()
    if self._tb is None:
      os.makedirs(self.workdir, exist_ok=True)
      _end_torn_line(os.path.join(self.workdir, "metrics.jsonl"))
      from tensorboardX import SummaryWriter
      self._tb = SummaryWriter(os.path.join(self.workdir, "tensorboard", self.run or ""))
    row = {"step": step, "time": time.time(), **({"run": self.run} if self.run else {})}
    with open(os.path.join(self.workdir, "metrics.jsonl"), "a") as f:
      f.write(json.dumps({**row, **scalars}) + "\n")
    for k, v in scalars.items():
      if np.isfinite(v):              # a skipped non-finite step stays in the JSONL row
        self._tb.add_scalar(k, v, step)
    self._tb.flush()

  def close(self):
    if self._tb is not None:
      self._tb.close()


def _fmt(v: float) -> str:
  return f"{v:.4g}" if abs(v) < 1e5 else f"{v:.3e}"


def read_jsonl(workdir: str) -> list[dict]:
  """The rows of workdir/metrics.jsonl. A line cut short by a kill during its write is
  skipped with a warning naming it (a resumed run appends after it)."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  rows = []
  with open(path, errors="replace") as f:
    for number, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        rows.append(current_names(json.loads(line)))
      except json.JSONDecodeError:
        logging.warning("%s:%d: ignored a torn line (a write was interrupted): %.60r",
                        path, number, line.strip())
  return rows


def _end_torn_line(path: str) -> None:
  """If the file ends inside a line (a kill during a write), ends that line, so that new
  rows start on a line of their own."""
  if os.path.exists(path) and os.path.getsize(path):
    with open(path, "rb+") as f:
      f.seek(-1, os.SEEK_END)
      if f.read(1) != b"\n":
        f.write(b"\n")


# Names older runs wrote (TensorBoard mangled them) -> today's.
_RENAMED = ((re.compile(r"->"), "_to_"), (re.compile(r"/R@(\d+)$"), r"/R\1"),
            (re.compile(r"^(loss/\w+):(\w+)$"), r"\1-\2"))


def current_names(row: dict) -> dict:
  """A metrics row with the names of older runs ("retrieval/image->text/R@1",
  "loss/image:text") changed to the current ones."""
  out = {}
  for key, value in row.items():
    for pattern, repl in _RENAMED:
      key = pattern.sub(repl, key)
    out[key] = value
  return out


def plot_loss_curve(workdir: str) -> str | None:
  """metrics.jsonl -> loss_curve.png (training loss and, if logged, zero-shot accuracy)."""
  rows = [r for r in read_jsonl(workdir) if "run" not in r]   # not `xmodal eval`'s rows
  train = [(r["step"], r["loss"]) for r in rows if "loss" in r]
  if not train or jax.process_index() != 0:
    return None
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(6, 4))
  steps, losses = zip(*train)
  ax.plot(steps, losses, label="train loss")
  ax.set_xlabel("step")
  ax.set_ylabel("loss")
  handles = ax.get_lines()
  evals = [(r["step"], r["zeroshot/top1"]) for r in rows if "zeroshot/top1" in r]
  if evals:
    ax2 = ax.twinx()
    handles += ax2.plot(*zip(*evals), "o-", color="tab:orange", label="zero-shot top-1")
    ax2.set_ylabel("zero-shot top-1")
    ax2.set_ylim(0, 1)
  ax.set_title(os.path.basename(os.path.abspath(workdir)))
  ax.legend(handles=handles, loc="upper right")
  path = os.path.join(workdir, "loss_curve.png")
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path


def plot_similarity(workdir: str, a, b, a_name: str, b_name: str, step: int, n: int = 32) -> str | None:
  """The first n x n block of a @ b.T as similarity_{step}.png (matches on the diagonal)."""
  if jax.process_index() != 0:
    return None
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  sim = np.asarray(a[:n]) @ np.asarray(b[:n]).T
  fig, ax = plt.subplots(figsize=(5, 4.5))
  im = ax.imshow(sim, cmap="viridis")
  ax.set_xlabel(b_name)
  ax.set_ylabel(a_name)
  ax.set_title(f"cosine similarity, step {step}")
  fig.colorbar(im, ax=ax)
  path = os.path.join(workdir, f"similarity_{step}.png")
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path
