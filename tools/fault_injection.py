"""Fault injection: what the operator of a long run meets, tried on the real `xmodal train`.

Every scenario runs the command in a subprocess on a small config (shapes, 40 steps, a
checkpoint every 5) and checks three things:
  - the run completes, or stops with one clear line (its exit status and last line are shown);
  - once resumed, the logged loss sequence equals the uninterrupted run's, step for step,
    bit for bit;
  - nothing the user wrote is deleted: a file in the workdir and one beside the checkpoints
    survive, and damaged checkpoints are moved aside, not removed.
Scenarios: SIGKILL at random moments, during a save and during the final evaluation; SIGTERM;
Ctrl-C to the process group (grain workers included) and a second Ctrl-C; the newest
checkpoint damaged in seven ways, and every checkpoint damaged; a torn last line in
metrics.jsonl; a full disk (a small tmpfs; without permission to mount, a file-size limit);
non-finite batches (inf in cached features, with and without micro-batches, on 1 and 2
processes), a learning rate that diverges. Prints a table and writes it to
docs/benchmarks/faults.md.

  python tools/fault_injection.py               # every scenario, ~25 min on 2 busy cores
  python tools/fault_injection.py --only kill   # the scenarios whose name contains "kill"

`python tools/fault_injection.py child [--pause=save:STEP|eval] [--marker=FILE]
[--fsize_limit=BYTES] -- ARGS` runs `xmodal ARGS` and pauses at one chosen moment, creating
FILE first so that a kill lands exactly there: `save:STEP` just before Orbax commits
checkpoint STEP (its files written into the temporary folder, not yet renamed into place);
`eval` at the start of an evaluation. `--fsize_limit` makes every write past BYTES fail
(EFBIG), a disk-full stand-in that needs no mount. The test suite uses it for its
kill-and-resume tests.
"""

import argparse
import asyncio
import datetime
import glob
import json
import logging
import os
import platform
import random
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
TOTAL = 40
USER_FILES = ("notes.txt", os.path.join("checkpoints", "notes.txt"))


# ------------------------------------------------------------------------- child mode
def child(argv) -> int:
  """`xmodal` with an injected pause (see the module docstring)."""
  parser = argparse.ArgumentParser()
  parser.add_argument("--pause", default="")
  parser.add_argument("--marker", default="")
  parser.add_argument("--fsize_limit", type=int, default=0)
  args, rest = parser.parse_known_args(argv)
  rest = [a for a in rest if a != "--"]
  if args.fsize_limit:     # writes past this many bytes fail with EFBIG (a disk-full stand-in)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (args.fsize_limit, args.fsize_limit))

  def arrive():
    with open(args.marker, "w"):
      pass

  if args.pause.startswith("save:"):
    step = args.pause.split(":", 1)[1]
    from orbax.checkpoint._src.path import atomicity
    commit = atomicity.AtomicRenameTemporaryPath.finalize

    async def finalize(self):
      if self._final_path.name == step:          # the step folder, not one of its items
        arrive()
        await asyncio.sleep(3600)
      return await commit(self)

    atomicity.AtomicRenameTemporaryPath.finalize = finalize
  elif args.pause == "eval":
    from xmodal import evaluate
    run = evaluate.run

    def paused(*a, **k):
      arrive()
      time.sleep(3600)
      return run(*a, **k)

    evaluate.run = paused
  from xmodal import cli
  return cli.main(["xmodal"] + rest)


def child_command(workdir, config_file, pause="", marker="", extra=(), fsize_limit=None):
  cmd = [sys.executable, os.path.abspath(__file__), "child"]
  if pause:
    cmd += [f"--pause={pause}", f"--marker={marker}"]
  if fsize_limit:
    cmd += [f"--fsize_limit={fsize_limit}"]
  return cmd + ["--", "train", f"--config={config_file}", f"--workdir={workdir}", *extra]


# ------------------------------------------------------------------------- helpers
CONFIG = """\
from xmodal import default_config
def get_config(arg=None):
  c = default_config.get_config()
  c.data.image_size, c.towers.image.patch_size = 16, 8
  for tower in c.towers.values():
    tower.width, tower.depth, tower.num_heads = 32, 1, 2
  c.model.embed_dim, c.batch_size, c.eval.batch_size = 32, 32, 64
  c.data.shapes_eval_size = 128
  c.optim.warmup_steps = 3
  c.train.total_steps, c.train.log_every, c.train.eval_every = {total}, 1, 0
  c.train.checkpoint_every, c.train.keep_checkpoints = 5, 2
  c.update_from_flattened_dict({overrides!r})
  return c
"""

FEATURES_CONFIG = """\
from xmodal import default_config
def get_config(arg=None):
  c = default_config.get_config()
  c.data.source = "features"
  c.data.train_files, c.data.eval_files = {train!r}, {eval!r}
  c.towers = default_config.ConfigDict()
  for name in ("image", "text"):
    tower = default_config.tower_defaults("vector")
    tower.update(dict(features=16, encoder="identity", head="mlp", head_hidden=32))
    c.towers[name] = tower
  c.model.embed_dim, c.batch_size, c.eval.batch_size = 16, 32, 64
  c.optim.lr, c.optim.warmup_steps = 3e-3, 3
  c.train.total_steps, c.train.log_every, c.train.eval_every = {total}, 1, 0
  c.train.checkpoint_every = 10
  c.update_from_flattened_dict({overrides!r})
  return c
"""


class Env:
  """Scratch space, configs and subprocess plumbing for the scenarios."""

  def __init__(self, root):
    self.root = root
    self.env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT + os.pathsep
                    + os.environ.get("PYTHONPATH", ""))
    self.env["XLA_FLAGS"] = (self.env.get("XLA_FLAGS", "")
                             + " --xla_force_host_platform_device_count=8").strip()
    # One persistent compilation cache for every run: only the first one compiles.
    self.env.update(JAX_COMPILATION_CACHE_DIR=os.path.join(root, "jax-cache"),
                    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                    JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")

  def config(self, name, overrides=None, template=CONFIG, **fields):
    path = os.path.join(self.root, f"{name}.py")
    with open(path, "w") as f:
      f.write(template.format(total=TOTAL, overrides=overrides or {}, **fields))
    return path

  def workdir(self, name):
    path = os.path.join(self.root, name)
    os.makedirs(os.path.join(path, "checkpoints"), exist_ok=True)
    for rel in USER_FILES:
      with open(os.path.join(path, rel), "w") as f:
        f.write("written by the user\n")
    return path

  def start(self, workdir, config, pause="", extra=(), env=None, fsize_limit=None, **popen):
    marker = os.path.join(self.root, f"marker-{os.getpid()}-{time.time_ns()}")
    log = open(os.path.join(self.root, f"log-{time.time_ns()}.txt"), "w+")
    proc = subprocess.Popen(child_command(workdir, config, pause, marker, extra, fsize_limit),
                            env=dict(self.env, **(env or {})), stdout=log,
                            stderr=subprocess.STDOUT, text=True, **popen)
    proc.marker, proc.log = marker, log
    return proc

  def run(self, workdir, config, extra=(), env=None, timeout=600, **popen):
    """Runs to the end; returns (exit status, output)."""
    proc = self.start(workdir, config, extra=extra, env=env, **popen)
    return finish(proc, timeout)


def finish(proc, timeout=600):
  try:
    proc.wait(timeout=timeout)
  finally:
    if proc.poll() is None:
      proc.kill()
      proc.wait()
  proc.log.seek(0)
  output = proc.log.read()
  proc.log.close()
  return proc.returncode, output


def wait_for(proc, predicate, timeout=300, poll=0.02) -> bool:
  deadline = time.time() + timeout
  while time.time() < deadline and proc.poll() is None:
    if predicate():
      return True
    time.sleep(poll)
  return False


def losses(workdir) -> dict:
  from xmodal import metrics
  return {r["step"]: r["loss"] for r in metrics.read_jsonl(workdir) if "loss" in r}


def last_step(workdir) -> int:
  return max(losses(workdir), default=0)


def same_losses(workdir, reference) -> str:
  got, want = losses(workdir), losses(reference)
  if sorted(got) != list(range(1, TOTAL + 1)):
    return f"steps {sorted(got)[:3]}..{sorted(got)[-3:]} logged, not 1..{TOTAL}"
  diff = [s for s in range(1, TOTAL + 1) if got[s] != want[s]]
  return "" if not diff else f"differs at steps {diff[:5]}"


def user_files_kept(workdir) -> bool:
  return all(os.path.exists(os.path.join(workdir, rel)) for rel in USER_FILES)


def last_line(output) -> str:
  lines = [line for line in output.strip().splitlines() if line.strip()]
  return lines[-1] if lines else ""


def error_lines(output) -> list[str]:
  return [line for line in output.splitlines() if line.startswith("xmodal train:")]


def tracebacks(output) -> int:
  return output.count("Traceback (most recent call last)")


def complete_steps(workdir) -> list[int]:
  folder = os.path.join(workdir, "checkpoints")
  return sorted(int(n) for n in os.listdir(folder) if n.isdigit())


def temporary(workdir) -> list[str]:
  return [n for n in os.listdir(os.path.join(workdir, "checkpoints"))
          if "orbax-checkpoint-tmp" in n]


class Row(dict):
  def check(self, ok: bool, problem: str):
    if not ok:
      self.setdefault("problems", []).append(problem)


def resume_and_check(env, row, workdir, config, reference, expect_from=None):
  """Resumes to the end; records whether it completed, matched the reference and kept the
  user's files."""
  rc, out = env.run(workdir, config)
  row.check(rc == 0, f"resume exit {rc}: {last_line(out)[:200]}")
  row.check(tracebacks(out) == 0, "a traceback while resuming")
  resumed = [line for line in out.splitlines() if line.startswith("resumed from")]
  row["resumed"] = resumed[0].split("/")[-1] if resumed else "start"
  if expect_from is not None:
    row.check(row["resumed"] == str(expect_from),
              f"resumed from {row['resumed']}, expected {expect_from}")
  problem = same_losses(workdir, reference)
  row.check(not problem, f"loss sequence {problem}")
  row["losses"] = "equal" if not problem else problem
  row.check(os.path.exists(os.path.join(workdir, "final_metrics.json")), "no final_metrics.json")
  row.check(user_files_kept(workdir), "a user file was deleted")
  return out


# ------------------------------------------------------------------------- scenarios
def s_kill_random(env, ref, rng):
  """SIGKILL at three random moments in a row, then resume to the end. Each moment: a step
  drawn uniformly from the ones left (the first of them meaning start-up and restore), then
  a random delay of up to a second (or up to 15 s of start-up)."""
  workdir, cfg = env.workdir("kill_random"), env.config("base")
  row, moments = Row(fault="SIGKILL at 3 random moments in a row"), []
  while len(moments) < 3:
    first = last_step(workdir)
    target = rng.randint(first, TOTAL)
    proc = env.start(workdir, cfg)
    if target > first:
      wait_for(proc, lambda: last_step(workdir) >= target)
    wait_for(proc, lambda: False, timeout=rng.uniform(0, 1 if target > first else 15))
    if proc.poll() is not None:          # it finished first: draw again
      finish(proc)
      continue
    step, tmp = last_step(workdir), temporary(workdir)
    proc.send_signal(signal.SIGKILL)
    finish(proc)
    phase = ("start-up" if step == first else "a save" if tmp else
             "the final evaluation" if step == TOTAL else "training")
    moments.append(f"step {step} (during {phase})")
  row["injected"] = "killed at " + ", ".join(moments)
  row["outcome"] = "killed (-9)"
  resume_and_check(env, row, workdir, cfg, ref["workdir"])
  return row


def s_kill_save(env, ref, rng):
  workdir, cfg = env.workdir("kill_save"), env.config("base")
  row = Row(fault="SIGKILL during a save")
  proc = env.start(workdir, cfg, pause="save:20")
  arrived = wait_for(proc, lambda: os.path.exists(proc.marker))
  row.check(arrived, "the pause was never reached")
  tmp = temporary(workdir)
  proc.send_signal(signal.SIGKILL)
  finish(proc)
  row["injected"] = f"checkpoint 20 written into {', '.join(tmp) or '?'}, killed before its commit"
  row["outcome"] = "killed (-9)"
  out = resume_and_check(env, row, workdir, cfg, ref["workdir"], expect_from=15)
  row.check("an unfinished save" in out, "the temporary folder was not reported")
  row.check(not temporary(workdir), "a temporary folder is left")
  return row


def s_kill_eval(env, ref, rng):
  workdir, cfg = env.workdir("kill_eval"), env.config("base")
  row = Row(fault="SIGKILL during the final evaluation")
  proc = env.start(workdir, cfg, pause="eval")
  row.check(wait_for(proc, lambda: os.path.exists(proc.marker)), "the pause was never reached")
  proc.send_signal(signal.SIGKILL)
  finish(proc)
  row["injected"] = f"all {TOTAL} steps done and checkpointed; killed inside the final evaluation"
  row["outcome"] = "killed (-9)"
  resume_and_check(env, row, workdir, cfg, ref["workdir"], expect_from=TOTAL)
  final = json.load(open(os.path.join(workdir, "final_metrics.json")))
  want = json.load(open(os.path.join(ref["workdir"], "final_metrics.json")))
  same = all(final[k] == want[k] for k in want if k.startswith(("retrieval/", "zeroshot/")))
  row.check(same, "final metrics differ from the uninterrupted run's")
  return row


def _signal_row(env, ref, name, signum, group=False, twice=False, workers=0):
  cfg = env.config("workers" if workers else "base",
                   {"data.num_workers": workers} if workers else None)
  reference = ref["workers"] if workers else ref["workdir"]
  workdir = env.workdir(name.replace(" ", "_"))
  row, expect = Row(fault=name), None
  proc = env.start(workdir, cfg, start_new_session=group)
  wait_for(proc, lambda: last_step(workdir) >= 12)
  send = (lambda s: os.killpg(proc.pid, s)) if group else proc.send_signal
  started = time.time()
  send(signum)
  if twice:
    time.sleep(0.05)
    send(signum)
  rc, out = finish(proc, 120)
  row["injected"] = (f"{signal.Signals(signum).name}{' twice' if twice else ''} at step "
                     f"{last_step(workdir)}" + (" to the process group" if group else "")
                     + (f" ({workers} grain workers in it)" if workers else ""))
  said = error_lines(out)[-1] if error_lines(out) else last_line(out)
  row["outcome"] = f"exit {rc} after {time.time() - started:.1f} s: {said}"
  row.check(tracebacks(out) == 0, "a traceback on the signal")
  if twice:
    row.check(rc == -signum, f"exit {rc}, expected death by the signal")
  else:
    row.check(rc == 128 + signum, f"exit {rc}, expected {128 + signum}")
    stopped = [line for line in error_lines(out) if "stopped by" in line]
    row.check(len(stopped) == 1, "no one-line stop message")
    if stopped:
      step = int(stopped[0].split("after step ")[1].split(";")[0])
      row.check(step in complete_steps(workdir), f"no complete checkpoint {step}")
      row.check(step == last_step(workdir), "saved at another step than the last one logged")
      expect = step
  resume_and_check(env, row, workdir, cfg, reference, expect_from=expect)
  return row


def s_sigterm(env, ref, rng):
  return _signal_row(env, ref, "SIGTERM mid-run", signal.SIGTERM)


def s_ctrl_c_workers(env, ref, rng):
  return _signal_row(env, ref, "Ctrl-C with 2 grain workers", signal.SIGINT, group=True,
                     workers=2)


def s_ctrl_c_twice(env, ref, rng):
  return _signal_row(env, ref, "Ctrl-C twice", signal.SIGINT, group=True, twice=True)


def _damage_base(env, ref):
  """A workdir stopped by SIGTERM after step 17: checkpoints 15 and 17."""
  base = os.path.join(env.root, "damage_base")
  if not os.path.exists(base):
    workdir, cfg = env.workdir("damage_base"), env.config("base")
    proc = env.start(workdir, cfg)
    wait_for(proc, lambda: last_step(workdir) >= 16, poll=0.005)
    proc.send_signal(signal.SIGTERM)
    finish(proc, 120)
  return base


def _files(step_dir, pattern):
  return [f for f in glob.glob(os.path.join(step_dir, pattern), recursive=True)
          if os.path.isfile(f)]


def _zero(files):
  for f in files:
    size = os.path.getsize(f)
    with open(f, "wb") as fh:
      fh.write(b"\0" * size)


DAMAGE = {
    "zero-filled array files": lambda d: _zero(_files(d, "state/**/d/*")),
    "array files deleted": lambda d: [os.remove(f) for f in _files(d, "state/**/d/*")],
    "array files truncated to half": lambda d: [os.truncate(f, os.path.getsize(f) // 2)
                                                for f in _files(d, "state/**/d/*")],
    "state/ item deleted": lambda d: shutil.rmtree(os.path.join(d, "state")),
    "data/ item (iterator position) deleted": lambda d: shutil.rmtree(os.path.join(d, "data")),
    "meta JSON cut short": lambda d: [open(f, "w").write('{"step": 1') for f in _files(d, "meta/*")
                                      if not f.endswith("commit_success.txt")],
}


def s_damage(env, ref, rng):
  rows = []
  base = _damage_base(env, ref)
  newest = max(complete_steps(base))
  cfg = env.config("base")
  for how, damage in list(DAMAGE.items()) + [("an empty newer step folder", None)]:
    workdir = os.path.join(env.root, "damage_" + str(len(rows)))
    shutil.copytree(base, workdir)
    row = Row(fault=f"newest checkpoint damaged: {how}")
    if damage is None:
      os.makedirs(os.path.join(workdir, "checkpoints", str(newest + 3)))
      bad, expect = newest + 3, newest
    else:
      damage(os.path.join(workdir, "checkpoints", str(newest)))
      bad, expect = newest, complete_steps(base)[-2]
    row["injected"] = f"checkpoint {bad}: {how}"
    out = resume_and_check(env, row, workdir, cfg, ref["workdir"], expect_from=expect)
    said = [line for line in out.splitlines() if "does not restore" in line]
    row["outcome"] = said[0][:160] + "..." if said else "(nothing said)"
    row.check(len(said) == 1, "not one line about the damaged checkpoint")
    row.check(os.path.isdir(os.path.join(workdir, "damaged_checkpoints", str(bad))),
              "the damaged checkpoint was not kept in damaged_checkpoints/")
    rows.append(row)
  return rows


def s_damage_all(env, ref, rng):
  base = _damage_base(env, ref)
  workdir = os.path.join(env.root, "damage_all")
  shutil.copytree(base, workdir)
  steps = complete_steps(workdir)
  for step in steps:
    _zero(_files(os.path.join(workdir, "checkpoints", str(step)), "state/**/d/*"))
  row = Row(fault="every checkpoint damaged", injected=f"checkpoints {steps}: zero-filled arrays")
  rc, out = env.run(workdir, env.config("base"))
  errors = error_lines(out)
  listed = [line for line in out.splitlines() if line.startswith("  ") and "checkpoints/" in line]
  row["outcome"] = (f"exit {rc}: " + (errors[0] if errors else last_line(out))[:120]
                    + " + one line per checkpoint")
  row["resumed"], row["losses"] = "-", "- (nothing to resume)"
  row.check(rc == 1, f"exit {rc}")
  row.check(len(listed) == len(steps),
            f"{len(listed)} checkpoint lines for {len(steps)} checkpoints")
  row.check(tracebacks(out) == 0, "a traceback")
  row.check(complete_steps(workdir) == steps, "a checkpoint was moved or deleted")
  row.check(user_files_kept(workdir), "a user file was deleted")
  return row


def s_torn_metrics(env, ref, rng):
  workdir, cfg = env.workdir("torn_metrics"), env.config("base")
  row = Row(fault="torn last line in metrics.jsonl")
  proc = env.start(workdir, cfg)
  wait_for(proc, lambda: last_step(workdir) >= 12)
  proc.send_signal(signal.SIGKILL)
  finish(proc)
  with open(os.path.join(workdir, "metrics.jsonl"), "a") as f:
    f.write('{"step": 13, "loss": 2.71')       # what a kill inside write() leaves
  row["injected"] = f"killed at step {last_step(workdir)}, then half a JSON row appended"
  row["outcome"] = "killed (-9)"
  out = resume_and_check(env, row, workdir, cfg, ref["workdir"])
  warned = [line for line in out.splitlines() if "torn line" in line]
  row.check(bool(warned), "no warning about the torn line")
  row["outcome"] = warned[0][:150] if warned else "(no warning)"
  return row


def s_disk_full(env, ref, rng):
  row = Row(fault="disk full during a save")
  mount = os.path.join(env.root, "small_disk")
  os.makedirs(mount)
  ckpt = _dir_bytes(os.path.join(ref["workdir"], "checkpoints", str(TOTAL)))
  # Room for the config, logs and two checkpoints: the third save (keep_checkpoints=2 keeps
  # two while the third is written) runs out of space.
  size = int(ckpt * 2.6 + 300_000)
  mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", mount],
                           capture_output=True).returncode == 0
  cfg = env.config("base")
  try:
    workdir = env.workdir(os.path.join("small_disk", "run"))
    if mounted:
      how = f"a {size / 1e6:.1f} MB tmpfs (a checkpoint is {ckpt / 1e6:.2f} MB)"
      limit = None
    else:      # no permission to mount: a file-size limit makes writes fail (EFBIG) instead
      how = "RLIMIT_FSIZE below one array file (mount not permitted): EFBIG, not ENOSPC"
      limit = max(os.path.getsize(f) for f in _files(
          os.path.join(ref["workdir"], "checkpoints", str(TOTAL)), "**/*")) // 2
    outs = []
    for _ in range(2):           # the second start finds the disk still full
      outs.append(env.run(workdir, cfg, fsize_limit=limit))
    errors = [error_lines(o)[-1] if error_lines(o) else last_line(o) for _, o in outs]
    row["injected"] = how + "; started twice while full"
    row["outcome"] = f"exit {outs[0][0]}, then {outs[1][0]}: {errors[0][:220]}"
    for rc, out in outs:
      row.check(rc == 1, f"exit {rc} while full")
      row.check(tracebacks(out) == 0, "a traceback while full")
      row.check(len(error_lines(out)) == 1 and "free" in error_lines(out)[0],
                "no single line naming the free space")
    if mounted:
      subprocess.run(["mount", "-o", "remount,size=200m", mount], check=True)
    resume_and_check(env, row, workdir, cfg, ref["workdir"])
    row.check(not temporary(workdir), "a temporary folder is left")
  finally:
    if mounted:
      subprocess.run(["umount", mount])
  return row


def _dir_bytes(path):
  return sum(os.path.getsize(f) for f in _files(path, "**/*"))


# -- non-finite batches
def _features(env):
  """Clustered features of 8 latent classes; rows 7, 200 and 333 of the train split hold
  inf (3 of 512). Returns (train path, eval path, bad rows)."""
  import numpy as np
  path = os.path.join(env.root, "features")
  if os.path.exists(path):
    return os.path.join(path, "train.npz"), os.path.join(path, "eval.npz")
  os.makedirs(path)
  rng = np.random.default_rng(0)
  centres = {m: rng.normal(size=(8, 16)).astype(np.float32) for m in ("image", "text")}
  for split, n in (("train", 512), ("eval", 128)):
    labels = rng.integers(0, 8, n)
    arrays = {m: (c[labels] + 0.3 * rng.normal(size=(n, 16))).astype(np.float32)
              for m, c in centres.items()}
    if split == "train":
      arrays["image"][[7, 200, 333], 3] = np.inf
    np.savez(os.path.join(path, f"{split}.npz"), label=labels, **arrays)
  return os.path.join(path, "train.npz"), os.path.join(path, "eval.npz")


def expected_skips(config_file) -> int:
  """How many of the run's batches hold a non-finite value: read from the pipeline itself."""
  import importlib.util
  import numpy as np
  from xmodal.data import pipeline
  spec = importlib.util.spec_from_file_location("cfg", config_file)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  it = iter(pipeline.train_dataset(module.get_config()))
  return sum(int(not np.all(np.isfinite(next(it)["image"]))) for _ in range(TOTAL))


def finite_params(workdir) -> bool:
  """Whether the params of the workdir's newest checkpoint are all finite."""
  import jax
  import numpy as np
  from xmodal import notebook
  return all(np.all(np.isfinite(np.asarray(x)))
             for x in jax.tree.leaves(notebook.load(workdir).params))


def _nonfinite_row(env, name, overrides, processes=1):
  train, evaluation = _features(env)
  cfg = env.config(name.replace(" ", "_"), overrides, FEATURES_CONFIG, train=train, eval=evaluation)
  workdir = env.workdir(name.replace(" ", "_"))
  want = expected_skips(cfg)
  row = Row(fault=f"non-finite batches: {name}",
            injected=f"inf in 3 of 512 cached feature rows; {want} of the {TOTAL} batches hold one")
  if processes == 1:
    rc, out = env.run(workdir, cfg)
  else:
    import portpicker
    port = portpicker.pick_unused_port()
    procs = [env.start(workdir, cfg, extra=(f"--coordinator=127.0.0.1:{port}",
                                            f"--num_processes={processes}", f"--process_id={i}"),
                       env={"XLA_FLAGS": "--xla_force_host_platform_device_count=4"})
             for i in range(processes)]
    results = [finish(p) for p in procs]
    rc, out = max(r[0] for r in results), results[0][1]
  from xmodal import metrics
  rows = [r for r in metrics.read_jsonl(workdir) if "loss" in r]
  skipped = rows[-1]["train/skipped_steps"] if rows else -1
  lines = [line for line in out.splitlines() if "update skipped" in line]
  final = json.load(open(os.path.join(workdir, "final_metrics.json"))) if rc == 0 else {}
  finite = rc == 0 and finite_params(workdir)
  r1 = final.get("retrieval/image_to_text/R1", float("nan"))
  row["outcome"] = (f"exit {rc}; train/skipped_steps={skipped:.0f}, {len(lines)} skip lines; "
                    f"params finite: {finite}; R@1 {r1:.2f}, "
                    f"eval/nonfinite={final.get('eval/nonfinite')}")
  row["resumed"] = "-"
  row["losses"] = f"{skipped:.0f} skipped as predicted" if skipped == want else "-"
  row.check(rc == 0, f"exit {rc}: {last_line(out)[:200]}")
  row.check(skipped == want and len(lines) == want, f"{skipped} skipped, {want} expected")
  row.check(finite, "non-finite params")
  row.check(final.get("retrieval/image_to_text/R1", 0) > 4 / 128, "retrieval at chance")
  row.check(user_files_kept(workdir), "a user file was deleted")
  return row


def s_nonfinite(env, ref, rng):
  return _nonfinite_row(env, "1 process", {})


def s_nonfinite_microbatches(env, ref, rng):
  return _nonfinite_row(env, "GradCache, 2 micro-batches", {"train.microbatches": 2})


def s_nonfinite_two_processes(env, ref, rng):
  return _nonfinite_row(env, "2 processes x 4 devices", {}, processes=2)


def s_diverging_lr(env, ref, rng):
  workdir = env.workdir("diverging_lr")
  cfg = env.config("diverging", {"optim.lr": 1e6, "train.max_nonfinite_steps": 5})
  row = Row(fault="diverging learning rate",
            injected="optim.lr=1e6 (train.max_nonfinite_steps=5)")
  rc, out = env.run(workdir, cfg)
  errors = error_lines(out)
  row["outcome"] = f"exit {rc}: {errors[-1][:200] if errors else last_line(out)[:200]}..."
  row["resumed"], row["losses"] = "-", "-"
  row.check(rc == 1, f"exit {rc}")
  row.check(len(errors) == 1 and "Likely causes" in errors[0]
            and "optim.lr=1000000.0" in errors[0],
            "no one-line stop naming the causes and the learning rate")
  row.check(tracebacks(out) == 0, "a traceback")
  row.check(finite_params(workdir), "the newest checkpoint holds NaN or inf")
  return row


SCENARIOS = {
    "kill_random": s_kill_random, "kill_save": s_kill_save, "kill_eval": s_kill_eval,
    "sigterm": s_sigterm, "ctrl_c_workers": s_ctrl_c_workers, "ctrl_c_twice": s_ctrl_c_twice,
    "damage_newest": s_damage, "damage_all": s_damage_all, "torn_metrics": s_torn_metrics,
    "disk_full": s_disk_full, "nonfinite": s_nonfinite,
    "nonfinite_microbatches": s_nonfinite_microbatches,
    "nonfinite_two_processes": s_nonfinite_two_processes, "diverging_lr": s_diverging_lr,
}


# ------------------------------------------------------------------------- main
def references(env, need_workers):
  ref = {}
  ref["workdir"] = env.workdir("reference")
  rc, out = env.run(ref["workdir"], env.config("base"))
  if rc != 0:
    raise SystemExit(f"the reference run failed:\n{out[-3000:]}")
  if need_workers:
    ref["workers"] = env.workdir("reference_workers")
    rc, out = env.run(ref["workers"], env.config("workers", {"data.num_workers": 2}))
    if rc != 0:
      raise SystemExit(f"the reference run with workers failed:\n{out[-3000:]}")
  return ref


def table(rows, root) -> str:
  lines = ["| fault | injected | outcome (exit status, the line it printed) | resumed from | "
           "loss sequence vs uninterrupted | held |", "|---|---|---|---|---|---|"]
  for r in rows:
    held = "yes" if not r.get("problems") else "**no**: " + "; ".join(r["problems"])
    cells = [r["fault"], r.get("injected", ""), r.get("outcome", ""), r.get("resumed", ""),
             r.get("losses", ""), held]
    lines.append("| " + " | ".join(str(c).replace(root, "$TMP").replace("|", "\\|")
                                    .replace("\n", " ") for c in cells) + " |")
  return "\n".join(lines)


def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  if argv and argv[0] == "child":
    return child(argv[1:])
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--only", default="", help="run the scenarios whose name contains this")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--out", default=os.path.join(ROOT, "docs", "benchmarks", "faults.md"))
  parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
  args = parser.parse_args(argv)
  logging.basicConfig(level=logging.ERROR)   # this process reads torn metrics files on purpose
  chosen = {k: f for k, f in SCENARIOS.items() if args.only in k}
  root = tempfile.mkdtemp(prefix="xmodal-faults-")
  env, rng, rows = Env(root), random.Random(args.seed), []
  t0 = time.time()
  try:
    ref = references(env, need_workers=any("workers" in k for k in chosen))
    for name, scenario in chosen.items():
      started = time.time()
      try:
        result = scenario(env, ref, rng)
      except Exception as e:      # a scenario that breaks is a row that did not hold
        result = Row(fault=name, problems=[f"{type(e).__name__}: {e}"])
      for row in result if isinstance(result, list) else [result]:
        rows.append(row)
        print(f"[{time.time() - started:5.0f} s] {row['fault']}: "
              + ("held" if not row.get("problems") else "DID NOT HOLD: "
                 + "; ".join(row["problems"])), flush=True)
  finally:
    if not args.keep:
      shutil.rmtree(root, ignore_errors=True)
  held = sum(not r.get("problems") for r in rows)
  report = "\n".join([
      "# Fault injection",
      "",
      f"Run {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC on "
      f"{os.cpu_count()} CPU cores ({platform.machine()}, Python {platform.python_version()}), "
      f"8 simulated devices; {time.time() - t0:.0f} s in all. Command: "
      f"`python tools/fault_injection.py{' --only ' + args.only if args.only else ''}`.",
      "",
      f"Each row runs the real `xmodal train` in a subprocess on a small config (shapes, "
      f"{TOTAL} steps, a checkpoint every 5, 2 kept; the non-finite rows train MLP projectors "
      f"on cached features), injects the fault, and resumes with the same command. It "
      f"holds when the run completes or stops with one clear line and no traceback, the "
      f"resumed run logs exactly the uninterrupted run's loss at every step (compared as "
      f"floats, no tolerance), and the user's files (one in the workdir, one beside the "
      f"checkpoints) are still there. The non-finite rows hold when exactly the batches that "
      f"hold an inf are skipped (predicted by reading the pipeline), the params stay finite "
      f"and retrieval beats chance (1/128); the diverging row when the run stops with one line "
      f"naming the causes and its newest checkpoint holds no NaN. `$TMP` is the tool's "
      f"scratch folder; times are wall-clock on a machine shared with other jobs. "
      f"**{held} of {len(rows)} rows hold.**",
      "",
      table(rows, root),
      ""])
  print(report)
  if not args.only or args.out != parser.get_default("out"):
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
      f.write(report)
  return 0 if held == len(rows) else 1


if __name__ == "__main__":
  sys.exit(main())
