"""Benchmark: xmodal's train step against a plain Flax two-tower step and Hugging Face
`transformers`' `CLIPModel` on CPU torch; and the same step on GPU (`--gpu`).

CPU (the default), sections chosen by `--sections`:

  time     four train steps of the same shapes (image tower, text tower, linear heads,
           symmetric softmax loss, AdamW, float32, one CPU device) timed in alternating rounds
           in one process, so that machine load hits all of them alike:
             xmodal         the step `xmodal train` runs (`train.jit_train_step`: the real
                            model, optimizer, objective with its shard_map, state shardings);
             xmodal@before  the same with the Dense matmul as before this tool's change;
             flax           a minimal Flax step (`nn.MultiHeadDotProductAttention`, optax);
             torch          `transformers.CLIPModel`, `loss.backward()`, `torch.optim.AdamW`.
           examples/s, xmodal's ratio to each (median of per-round ratios), CPU time per
           example, and the first call (trace + compile + one step).
  costs    XLA's cost analysis of the compiled steps (FLOPs, bytes, ops), and the Dense kernel
           gradient's two product forms timed alone.
  profile  where the time goes: a `jax.profiler` trace, each op's fastest run, by op kind and
           phase (forward / backward / optimizer), for xmodal, xmodal@before and flax.
  loop     `xmodal train` itself (input pipeline, logging, evaluation, checkpoint) under the
           profiler, with and without `xmodal/prefetch.py`: how long the device waits.

Threads: every runtime gets the same cores. XLA's CPU thread pool sizes itself from the
process's CPU affinity, so `--threads N` pins the process to N cores (sched_setaffinity,
before JAX starts its backend) and sets `torch.set_num_threads(N)`; default: every core.

    python tools/bench_step.py                  # tiny + ViT-S/16 sizes, every section; writes
                                                # docs/benchmarks/step.md (long on 2 cores)
    python tools/bench_step.py --short          # tiny size, 3 rounds, every section
    python tools/bench_step.py --short --sections time   # the speed table alone
    python tools/bench_step.py --gpu            # ViT-B/16 two-tower, batch 256 per device, bf16,
                                                # remat none / full, cuDNN vs XLA attention:
                                                # examples/s and MFU -> docs/benchmarks/step_gpu.md
    python tools/bench_step.py --gpu --dry      # the GPU script's path at toy sizes, any backend
"""

import argparse
import collections
import contextlib
import dataclasses
import glob
import math
import os
import platform
import re
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Size:
  image: int            # pixels per side
  patch: int
  width: int            # image tower
  depth: int
  heads: int
  mlp: int
  context: int          # text tokens
  vocab: int
  text_width: int
  text_depth: int
  text_heads: int
  text_mlp: int
  embed: int
  batch: int            # per device


SIZES = {
    # The tiny two-tower: 64 image tokens, 32 text tokens.
    "tiny": Size(64, 8, 256, 6, 4, 1024, 32, 512, 256, 6, 4, 1024, 256, 128),
    # ViT-S/16 at 224 px (196 tokens) with a text tower of the same width.
    "s16": Size(224, 16, 384, 12, 6, 1536, 64, 32000, 384, 12, 6, 1536, 384, 32),
    # CLIP ViT-B/16: ViT-B/16 image tower, 12-layer 512-wide text tower, 77 tokens.
    "b16": Size(224, 16, 768, 12, 12, 3072, 77, 49408, 512, 12, 8, 2048, 512, 256),
    # --dry: the GPU script's code path at toy sizes.
    "toy": Size(32, 8, 64, 2, 2, 128, 16, 300, 64, 2, 2, 128, 64, 8),
}


def random_batch(size: Size, batch: int, seed: int = 0) -> dict:
  """uint8 images [B, S, S, 3], int32 token ids [B, L] (no padding: every row full)."""
  rng = np.random.default_rng(seed)
  return {"image": rng.integers(0, 256, (batch, size.image, size.image, 3), dtype=np.uint8),
          "text": rng.integers(3, size.vocab, (batch, size.context)).astype(np.int32)}


# ------------------------------------------------------------------------------- xmodal

def xmodal_config(size: Size, batch: int, dtype: str = "float32", remat: str = "none"):
  """The default config with the towers resized to `size` (xmodal's own pre-LN towers: gap
  pooling for images, causal text with EOS pooling, bias-free linear heads)."""
  from xmodal import default_config
  c = default_config.get_config()
  c.batch_size = batch
  c.data.image_size, c.data.context_length = size.image, size.context
  c.model.embed_dim, c.model.compute_dtype = size.embed, dtype
  im, tx = c.towers.image, c.towers.text
  im.patch_size, im.width, im.depth, im.num_heads, im.mlp_dim = (
      size.patch, size.width, size.depth, size.heads, size.mlp)
  tx.width, tx.depth, tx.num_heads, tx.mlp_dim, tx.vocab_size = (
      size.text_width, size.text_depth, size.text_heads, size.text_mlp, size.vocab)
  im.remat = tx.remat = remat
  c.train.total_steps = 10_000
  return c


class XmodalStep:
  """xmodal's train step as `xmodal train` builds it, on a resident random batch.

  before=True: the step as it was before the CPU Dense matmul (`layers.dense_dot_general`,
  see docs/benchmarks/step.md): flax's own `lax.dot_general`, traced on the first call."""

  def __init__(self, config, seed: int = 0, devices=None, before: bool = False):
    from xmodal import config as config_lib, losses, optim, parallel, sharding, train
    from xmodal.models import model as model_lib
    self.name = "xmodal@before" if before else "xmodal"
    self.before = before
    devices = jax.devices() if devices is None else devices
    config_lib.validate(config, len(devices))
    self.config = config
    self.mesh = parallel.make_mesh(config, devices)
    self.context = lambda: sharding.context(config, self.mesh)
    with self.context():
      model = model_lib.MultiTower(config)
      tx = optim.make_optimizer(config)
      state_sharding = sharding.state_shardings(model, tx, config, self.mesh)
      init = train.init_state_fn(model, tx, config)
      self.state = jax.jit(init, out_shardings=state_sharding)(jax.random.key(seed))
      self.step = train.jit_train_step(config, self.mesh, model, tx,
                                       losses.make_objective(config, self.mesh),
                                       optim.schedule(config), state_sharding,
                                       list(config.towers))
    self.batch = parallel.global_batch(self.mesh,
                                       random_batch(_size_of(config), config.batch_size))

  def run(self, steps: int) -> float:
    """Runs `steps` steps; returns wall seconds until the last one finished."""
    from xmodal.models import layers
    dense = layers.dense_dot_general
    if self.before:                        # only matters while the first call traces
      layers.dense_dot_general = jax.lax.dot_general
    try:
      return self._run(steps)
    finally:
      layers.dense_dot_general = dense

  def _run(self, steps: int) -> float:
    with self.context():
      t0 = time.perf_counter()
      for _ in range(steps):
        self.state, metrics = self.step(self.state, self.batch)
      jax.block_until_ready((self.state, metrics))
      return time.perf_counter() - t0

  def compiled(self):
    """The compiled step (as the first call traced it: `before` included)."""
    from xmodal.models import layers
    dense = layers.dense_dot_general
    if self.before:
      layers.dense_dot_general = jax.lax.dot_general
    try:
      with self.context():
        return self.step.lower(self.state, self.batch).compile()
    finally:
      layers.dense_dot_general = dense

  def compiled_text(self) -> str:
    return self.compiled().as_text()


def _size_of(config) -> Size:
  im, tx = config.towers.image, config.towers.text
  return Size(config.data.image_size, im.patch_size, im.width, im.depth, im.num_heads,
              im.mlp_dim, config.data.context_length, tx.vocab_size, tx.width, tx.depth,
              tx.num_heads, tx.mlp_dim, config.model.embed_dim, config.batch_size)


# ------------------------------------------------------------------------------- plain Flax

class PlainBlock(nn.Module):
  heads: int
  mlp: int
  causal: bool

  @nn.compact
  def __call__(self, x):
    mask = nn.make_causal_mask(jnp.ones(x.shape[:2])) if self.causal else None
    y = nn.LayerNorm()(x)
    x = x + nn.MultiHeadDotProductAttention(num_heads=self.heads)(y, mask=mask)
    y = nn.LayerNorm()(x)
    return x + nn.Dense(x.shape[-1])(nn.gelu(nn.Dense(self.mlp)(y)))


class PlainTwoTower(nn.Module):
  """ViT (gap) + causal text transformer (argmax pooling) + linear heads, unit embeddings."""
  size: Size

  @nn.compact
  def __call__(self, images, tokens):
    s = self.size
    x = nn.Conv(s.width, (s.patch, s.patch), strides=s.patch, padding="VALID")(
        images.astype(jnp.float32) / 127.5 - 1.0)
    x = x.reshape(x.shape[0], -1, s.width)
    x = x + self.param("image_pos", nn.initializers.normal(0.02), x.shape[1:])
    for _ in range(s.depth):
      x = PlainBlock(s.heads, s.mlp, causal=False)(x)
    image = nn.Dense(s.embed, use_bias=False)(nn.LayerNorm()(x).mean(axis=1))
    t = nn.Embed(s.vocab, s.text_width)(tokens)
    t = t + self.param("text_pos", nn.initializers.normal(0.01), (s.context, s.text_width))
    for _ in range(s.text_depth):
      t = PlainBlock(s.text_heads, s.text_mlp, causal=True)(t)
    t = nn.LayerNorm()(t)[jnp.arange(tokens.shape[0]), tokens.argmax(axis=1)]
    text = nn.Dense(s.embed, use_bias=False)(t)
    scale = self.param("logit_scale", nn.initializers.constant(math.log(1 / 0.07)), ())
    unit = lambda z: z / jnp.linalg.norm(z, axis=-1, keepdims=True)
    return unit(image), unit(text), jnp.exp(scale)


class FlaxStep:
  """The minimal Flax two-tower train step: CLIP loss, optax.adamw, donated state."""
  name = "flax"

  def __init__(self, size: Size, batch: int, seed: int = 0):
    model = PlainTwoTower(size)
    data = random_batch(size, batch)
    tx = optax.adamw(1e-3, weight_decay=0.05)
    params = model.init(jax.random.key(seed), data["image"][:1], data["text"][:1])["params"]
    self.state = (params, tx.init(params))

    def step(state, images, tokens):
      params, opt_state = state

      def loss_fn(p):
        zi, zt, scale = model.apply({"params": p}, images, tokens)
        logits = scale * zi @ zt.T
        labels = jnp.arange(logits.shape[0])
        return 0.5 * (optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
                      + optax.softmax_cross_entropy_with_integer_labels(logits.T, labels).mean())

      loss, grads = jax.value_and_grad(loss_fn)(params)
      updates, opt_state = tx.update(grads, opt_state, params)
      return (optax.apply_updates(params, updates), opt_state), loss

    self.step = jax.jit(step, donate_argnums=0)
    self.batch = (jnp.asarray(data["image"]), jnp.asarray(data["text"]))

  def run(self, steps: int) -> float:
    t0 = time.perf_counter()
    for _ in range(steps):
      self.state, loss = self.step(self.state, *self.batch)
    jax.block_until_ready((self.state, loss))
    return time.perf_counter() - t0

  def compiled(self):
    return self.step.lower(self.state, *self.batch).compile()

  def compiled_text(self) -> str:
    return self.compiled().as_text()


# ------------------------------------------------------------------------------- torch

class TorchStep:
  """transformers.CLIPModel (same widths, depths, heads, MLP, tanh GELU) + torch AdamW."""
  name = "torch"

  def __init__(self, size: Size, batch: int, threads: int, seed: int = 0):
    import torch
    import transformers
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    transformers.logging.set_verbosity_error()
    text = dict(vocab_size=size.vocab, hidden_size=size.text_width,
                intermediate_size=size.text_mlp, num_hidden_layers=size.text_depth,
                num_attention_heads=size.text_heads, max_position_embeddings=size.context,
                hidden_act="gelu_pytorch_tanh", pad_token_id=0, bos_token_id=1,
                eos_token_id=2)          # 2: pool at the highest id, as CLIP does
    vision = dict(image_size=size.image, patch_size=size.patch, hidden_size=size.width,
                  intermediate_size=size.mlp, num_hidden_layers=size.depth,
                  num_attention_heads=size.heads, hidden_act="gelu_pytorch_tanh")
    config = transformers.CLIPConfig(text_config=text, vision_config=vision,
                                     projection_dim=size.embed)
    self.torch = torch
    self.model = transformers.CLIPModel(config).train()
    self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-3, weight_decay=0.05)
    data = random_batch(size, batch)
    self.pixels = torch.from_numpy(data["image"].astype(np.float32) / 127.5 - 1).permute(
        0, 3, 1, 2).contiguous()
    self.ids = torch.from_numpy(data["text"]).long()

  def run(self, steps: int) -> float:
    t0 = time.perf_counter()
    for _ in range(steps):
      self.opt.zero_grad(set_to_none=True)
      loss = self.model(input_ids=self.ids, pixel_values=self.pixels, return_loss=True).loss
      loss.backward()
      self.opt.step()
    return time.perf_counter() - t0


# ------------------------------------------------------------------------------- timing

def compile_and_time(runners) -> dict:
  """{name: first-call seconds}: jit compile + one step (torch: its first, eager step)."""
  out = {}
  for r in runners:
    out[r.name] = r.run(1)
    print(f"  {r.name}: first step {out[r.name]:.1f}s", flush=True)
  return out


def alternate(runners, rounds: int, steps: int, batch: int) -> tuple[dict, dict]:
  """({name: [examples/s per round]}, {name: [process CPU seconds per example per round]});
  the order rotates every round. CPU time counts what the runtime's threads ran, so it
  hardly moves with machine load (spin-waiting threads count too)."""
  rates, cpu = collections.defaultdict(list), collections.defaultdict(list)
  for i in range(rounds):
    order = runners[i % len(runners):] + runners[:i % len(runners)]
    for r in order:
      c0 = time.process_time()
      rates[r.name].append(batch * steps / r.run(steps))
      cpu[r.name].append((time.process_time() - c0) / (batch * steps))
    print(f"  round {i + 1}/{rounds}: " + ", ".join(
        f"{r.name} {rates[r.name][-1]:.1f} ({1e3 * cpu[r.name][-1]:.0f} cpu-ms/ex)"
        for r in runners) + " examples/s", flush=True)
  return dict(rates), dict(cpu)


def summarize(rates: dict, cpu: dict) -> dict:
  """Medians, and xmodal's per-round ratio to each peer (median, min, max)."""
  out = {"median": {k: statistics.median(v) for k, v in rates.items()},
         "cpu_ms": {k: 1e3 * statistics.median(v) for k, v in cpu.items()}, "ratio": {}}
  for peer in rates:
    if peer != "xmodal":
      r = [a / b for a, b in zip(rates["xmodal"], rates[peer])]
      out["ratio"][peer] = (statistics.median(r), min(r), max(r))
  return out


# ------------------------------------------------------------------------------- costs

def compiled_costs(size: Size, batch: int, runners) -> dict:
  """{variant: (GFLOP, GB accessed, ops in the entry computation)} from XLA's cost analysis
  of the compiled step: xmodal, xmodal@before, flax, and xmodal with `loss.impl="dense"`
  (no shard_map, no collectives: what the objective's machinery costs on one device)."""
  variants = {r.name: r for r in runners if r.name != "torch"}
  config = xmodal_config(size, batch)
  config.loss.impl = "dense"
  variants["xmodal, loss.impl=dense"] = XmodalStep(config)
  out = {}
  for name, r in variants.items():
    compiled = r.compiled()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    text = compiled.as_text()
    entry = text[text.index("\nENTRY"):]
    ops = len(re.findall(r"^\s+(?:ROOT )?%\S+ = ", entry, re.M))
    out[name] = (cost["flops"] / 1e9, cost["bytes accessed"] / 1e9, ops)
    print(f"  {name}: {out[name][0]:.0f} GFLOP, {out[name][1]:.1f} GB accessed, {ops} ops",
          flush=True)
  return out


KERNEL_FORMS = {   # the kernel gradient dk [K, N] of y = x [M, K] . k [K, N], from g [M, N]
    "x^T g (rows contracted; the fast path)": lambda x, g, gt: jax.lax.dot_general(
        x, g, (((0,), (0,)), ((), ()))),
    "x^T (g^T)^T (XLA's form from autodiff)": lambda x, g, gt: jax.lax.dot_general(
        x, gt, (((0,), (1,)), ((), ()))),
}


def kernel_forms(m: int, shapes, repeats: int = 5) -> dict:
  """{(form, K, N): GFLOP per CPU-second} of the kernel-gradient product in the form the
  fast path states it and in the form XLA builds from autodiff's transpose rule (g^T given,
  as XLA materialises it)."""
  rng = np.random.default_rng(0)
  out = {}
  for k, n in shapes:
    x = jnp.asarray(rng.random((m, k), np.float32))
    g = jnp.asarray(rng.random((m, n), np.float32))
    gt = jnp.asarray(np.asarray(g).T.copy())
    for form, fn in KERNEL_FORMS.items():
      f = jax.jit(fn)
      f(x, g, gt).block_until_ready()
      c0 = time.process_time()
      for _ in range(repeats):
        f(x, g, gt).block_until_ready()
      out[(form, k, n)] = 2 * m * k * n * repeats / (time.process_time() - c0) / 1e9
  return out


# ------------------------------------------------------------------------------- profile

PROFILE_STEPS = 5   # per step variant: each op's fastest run of these counts


def _instructions(hlo_text: str) -> dict:
  """{instruction name: (opcode, called computation or "", op_name metadata)} and
  {computation name: [opcodes]} from an HLO module's text."""
  instrs, comps, current = {}, collections.defaultdict(list), None
  for line in hlo_text.splitlines():
    m = re.match(r"^(?:ENTRY )?%?([\w.\-]+) .*\{$", line)
    if m and not line.startswith(" "):
      current = m.group(1)
      continue
    m = re.match(r"^\s+(?:ROOT )?%?([\w.\-]+) = .*? ([\w\-]+)\(", line)
    if not m:
      continue
    name, opcode = m.groups()
    calls = re.search(r"calls=%?([\w.\-]+)", line)
    op_name = re.search(r'op_name="([^"]*)"', line)
    instrs[name] = (opcode, calls.group(1) if calls else "", op_name.group(1) if op_name else "")
    comps[current].append(opcode)
  return {"instrs": instrs, "comps": comps}


def op_category(name: str, hlo: dict) -> str:
  """What an executed HLO op computes, from its opcode(s): matmul, reduction, layout copy,
  gather/scatter, elementwise, ..."""
  opcode, calls, _ = hlo["instrs"].get(name, ("?", "", ""))
  ops = set(hlo["comps"].get(calls, [])) if calls else {opcode}
  if opcode == "dot":
    return "matmul: XLA dot (Eigen)"
  if ops & {"dot", "convolution"}:
    return "matmul: fusion (YNNPACK on CPU)"
  if ops & {"scatter", "gather", "dynamic-slice", "dynamic-update-slice"}:
    return "gather / scatter / dynamic slice"
  if ops & {"reduce", "reduce-window"}:
    return "reductions (norms, softmax, sums)"
  if ops & {"all-reduce", "all-gather", "reduce-scatter", "collective-permute",
            "custom-call", "sort", "rng-bit-generator", "while"}:
    return "collectives / custom calls / loops"
  if ops <= {"copy", "transpose", "bitcast", "reshape", "broadcast", "slice", "concatenate",
             "pad", "parameter", "tuple", "get-tuple-element", "constant"}:
    return "layout (copy, transpose, pad, broadcast)"
  return "elementwise"


def op_phase(name: str, hlo: dict) -> str:
  """forward / backward / optimizer, from the op's jax name stack."""
  op_name = hlo["instrs"].get(name, ("", "", ""))[2]
  if "transpose(jvp" in op_name:
    return "backward"
  if "jvp(" in op_name:
    return "forward"
  return "optimizer + rest"


def trace_events(logdir: str):
  """Every XLA op event of the newest trace under logdir: (module, op, run_id, start, end)."""
  path = max(glob.glob(f"{logdir}/**/*.xplane.pb", recursive=True), key=os.path.getmtime)
  data = jax.profiler.ProfileData.from_file(path)
  for plane in data.planes:
    for line in plane.lines:
      for ev in line.events:
        stats = dict(ev.stats)
        if "hlo_module" in stats and "hlo_op" in stats:
          yield (stats["hlo_module"], stats["hlo_op"], stats.get("run_id"), ev.start_ns,
                 ev.end_ns)


def profile(runner, steps: int, logdir: str) -> dict:
  """ms per step by (op kind, phase) for `runner`'s step from a jax.profiler trace of `steps`
  steps: each XLA op's fastest run over the traced steps (so that moments when the machine
  is busy elsewhere drop out), summed by kind. On more than one thread, ops that run at
  the same time add up, and ops XLA splits across threads count once."""
  hlo = _instructions(runner.compiled_text())
  runner.run(1)
  jax.profiler.start_trace(logdir)
  wall = runner.run(steps)
  jax.profiler.stop_trace()
  fastest = {}
  for mod, op, _, start, end in trace_events(logdir):
    if "train_step" in mod or mod == "jit_step":
      fastest[op] = min(fastest.get(op, math.inf), end - start)
  by = collections.Counter()
  for op, ns in fastest.items():
    by[(op_category(op, hlo), op_phase(op, hlo))] += ns / 1e6
  return {"wall_ms": wall * 1e3 / steps, "ops": len(fastest), "ms": dict(by)}


# ------------------------------------------------------------------------------- train loop

def loop_wait(size: Size, steps: int, workdir: str, logdir: str, prefetched: bool = True) -> dict:
  """Runs `xmodal train` on the `shapes` data at `size` under the profiler (logs every
  steps/4, evaluation and a checkpoint at steps/2) and measures, from the end of the first
  (compiling) step to the end of the last, when no train step runs on the device: the
  fraction of wall time overall and outside the evaluation + checkpoint gap, that gap
  against the evaluation's own time, and the median gap after log steps and after the others.

  prefetched=False: the loop as before `xmodal/prefetch.py` (each batch is put on the device
  by the loop's thread when the step asks for it)."""
  import json

  from xmodal import prefetch, train
  config = xmodal_config(size, size.batch)
  config.train.total_steps = steps
  config.optim.warmup_steps = 1
  config.train.log_every = max(1, steps // 4)
  config.train.eval_every = config.train.checkpoint_every = half = steps // 2
  config.eval.batch_size = size.batch
  config.data.shapes_eval_size = 2 * size.batch
  to_device = prefetch.to_device
  if not prefetched:
    prefetch.to_device = lambda ds, put, **_: ds.map(put)
  try:
    jax.profiler.start_trace(logdir)
    train.train(config, workdir)
    jax.profiler.stop_trace()
  finally:
    prefetch.to_device = to_device
  runs = collections.defaultdict(lambda: [math.inf, 0])
  for mod, _, run_id, start, end in trace_events(logdir):
    if "train_step" in mod:
      span = runs[run_id]
      span[0], span[1] = min(span[0], start), max(span[1], end)
  spans = sorted(runs.values())       # spans[k] is step k + 1; step 1 also compiled
  gaps = {k: spans[k][0] - spans[k - 1][1] for k in range(2, len(spans))}   # after step k
  window = spans[-1][1] - spans[1][0]
  busy = sum(e - s for s, e in spans[1:])
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  eval_s = next(r["eval/time_s"] for r in rows if r.get("step") == half and "eval/time_s" in r)
  log_steps = [k for k in gaps if k % config.train.log_every == 0 and k != half]
  other = [g for k, g in gaps.items() if k not in log_steps and k != half]
  return {"steps": len(spans) - 1, "wait": 1 - busy / window,
          "wait_outside_eval": 1 - busy / (window - gaps[half]),
          "eval_gap_s": gaps[half] / 1e9, "eval_s": eval_s,
          "log_gap_ms": statistics.median(gaps[k] for k in log_steps) / 1e6,
          "gap_ms": statistics.median(other) / 1e6,
          "step_ms": statistics.median(e - s for s, e in spans[1:]) / 1e6}


# ------------------------------------------------------------------------------- GPU

PEAK_BF16_TFLOPS = {    # dense bf16 tensor-core peak per device (no sparsity)
    "H100": 989.0, "H200": 989.0, "H800": 989.0, "A100": 312.0, "B200": 2250.0,
    "L40S": 362.0, "A10": 125.0, "L4": 121.0, "V100": 125.0,
}


def peak_tflops(device_kind: str) -> float | None:
  """bf16 peak from the device kind ("NVIDIA H100 80GB HBM3" -> 989); None if unknown."""
  for key in sorted(PEAK_BF16_TFLOPS, key=len, reverse=True):
    if key.lower() in device_kind.lower():
      return PEAK_BF16_TFLOPS[key]
  return None


def model_flops(size: Size, batch: int) -> float:
  """Training FLOPs of one step of the two-tower model: 6 x matmul params x tokens (forward
  + backward) plus attention's two L x L matmuls (12 x depth x L^2 x width per example);
  remat's recomputation is not model FLOPs (MFU, as in PaLM)."""
  patches = (size.image // size.patch) ** 2
  vit = size.depth * (4 * size.width ** 2 + 2 * size.width * size.mlp)
  txt = size.text_depth * (4 * size.text_width ** 2 + 2 * size.text_width * size.text_mlp)
  dense = (vit * patches + 3 * size.patch ** 2 * size.width * patches
           + txt * size.context + (size.width + size.text_width) * size.embed)
  attn = (size.depth * patches ** 2 * size.width
          + size.text_depth * size.context ** 2 * size.text_width)
  return batch * (6 * dense + 12 * attn)


def gpu_bench(size: Size, steps: int, dry: bool) -> tuple[list[dict], dict]:
  """The two-tower model at `size.batch` per device, bf16: remat none / full with the
  attention `layers.attention` picks (cuDNN where it runs), and, where that is cuDNN, once
  more with XLA's attention for comparison. Returns the rows and the cuDNN-vs-XLA check."""
  from xmodal.models import layers
  devices = jax.devices()[:1] if dry else jax.devices()   # dry: one device compiles faster
  n = len(devices)
  kind = devices[0].device_kind
  peak = peak_tflops(kind)
  auto = layers.attention_implementation(jnp.bfloat16, size.width // size.heads)
  variants = [("none", auto), ("full", auto)] + ([("none", "xla")] if auto != "xla" else [])
  rows = []
  for remat, attn in variants:
    config = xmodal_config(size, size.batch * n, "bfloat16", remat)
    with _attention(layers, attn):
      t0 = time.perf_counter()
      runner = XmodalStep(config, devices=devices)
      runner.run(1)
      compile_s = time.perf_counter() - t0
    runner.run(1 if dry else 3)
    seconds = runner.run(steps)
    rate = config.batch_size * steps / seconds
    achieved = model_flops(size, config.batch_size) * steps / seconds / n / 1e12
    rows.append({"remat": remat, "attention": attn, "devices": n, "kind": kind,
                 "compile_s": compile_s, "examples_per_s": rate, "per_device": rate / n,
                 "tflops": achieved, "mfu": achieved / peak if peak else None})
    print(f"  remat={remat} attention={attn}: {rate:.1f} examples/s, {achieved:.1f} TFLOP/s "
          "per device" + (f", MFU {achieved / peak:.1%}" if peak else ""), flush=True)
    del runner
  return rows, attention_check(size, auto)


@contextlib.contextmanager
def _attention(layers, implementation: str):
  """Within it, the towers trace attention with `implementation` (for the comparison row)."""
  chosen = layers.attention_implementation
  layers.attention_implementation = lambda *a, **k: (
      "xla" if implementation == "xla" else chosen(*a, **k))
  try:
    yield
  finally:
    layers.attention_implementation = chosen


def attention_check(size: Size, implementation: str) -> dict:
  """Max |difference| of `layers.attention` (cuDNN where it runs) against XLA's attention,
  outputs and input gradients, bf16, one device's worth of image tokens."""
  from xmodal.models import layers
  tokens, heads = (size.image // size.patch) ** 2, size.heads
  rng = np.random.default_rng(0)
  q, k, v = (jnp.asarray(rng.normal(size=(min(size.batch, 32), tokens, heads,
                                            size.width // heads)), jnp.bfloat16)
             for _ in range(3))

  def loss(fn, q, k, v):
    return jnp.sum(fn(q, k, v).astype(jnp.float32) ** 2)

  xla = lambda q, k, v: jax.nn.dot_product_attention(q, k, v, implementation="xla")
  out = [jax.jit(f)(q, k, v).astype(jnp.float32) for f in (layers.attention, xla)]
  grads = [jax.jit(jax.grad(lambda *a, f=f: loss(f, *a), argnums=(0, 1, 2)))(q, k, v)
           for f in (layers.attention, xla)]
  return {"implementation": implementation,
          "out": float(jnp.max(jnp.abs(out[0] - out[1]))),
          "grad": max(float(jnp.max(jnp.abs(a.astype(jnp.float32) - b.astype(jnp.float32))))
                      for a, b in zip(*grads)),
          "scale": float(jnp.max(jnp.abs(out[1])))}


# ------------------------------------------------------------------------------- report

def _conditions(threads: int) -> str:
  try:
    load = ", load average %.1f" % os.getloadavg()[0]
  except OSError:
    load = ""
  import torch
  return (f"{platform.machine()} CPU, {threads} of {os.cpu_count()} cores for each runtime "
          f"(XLA by CPU affinity, torch.set_num_threads({threads})){load}; jax "
          f"{jax.__version__}, torch {torch.__version__}, one CPU device, float32")


SHARED = (" Timings on a machine shared with other work move with its load (the load average "
          "above): hence alternating rounds, per-round ratios and CPU time per example.")


def cpu_report(results: dict, breakdowns: dict, loop: dict | None, costs: dict | None,
               args) -> str:
  command = " ".join(["python tools/bench_step.py", *args.argv])
  lines = ["# Train-step speed on CPU: xmodal vs a plain Flax step vs transformers' CLIPModel",
           "", f"`{command}`: {_conditions(args.threads)}. Sizes: " + "; ".join(
               f"**{n}** image {SIZES[n].image} px / patch {SIZES[n].patch}, width "
               f"{SIZES[n].width}, {SIZES[n].depth} layers, {SIZES[n].heads} heads, MLP "
               f"{SIZES[n].mlp}; text {SIZES[n].context} tokens, vocab {SIZES[n].vocab}, width "
               f"{SIZES[n].text_width}, {SIZES[n].text_depth} layers; embedding {SIZES[n].embed}"
               for n in (results or {"tiny": 0})) + ". AdamW, float32, one CPU device." + SHARED,
           ""]
  names = ["xmodal", "xmodal@before", "flax", "torch"]
  if results:
    lines += ["| size | batch | rounds x steps | " + " | ".join(f"{n} ex/s" for n in names) +
              " | xmodal / torch | xmodal / flax | xmodal / xmodal@before | CPU ms per example "
              "(" + " / ".join(names) + ") | first step, s (" + " / ".join(names) + ") |",
              "|---|---:|---:|" + "---:|" * (len(names) + 3) + "---|---|"]
    fmt = lambda r: f"**{r[0]:.2f}x** ({r[1]:.2f}-{r[2]:.2f})"
    for name, res in results.items():
      med, ratio, first, cpu = res["median"], res["ratio"], res["first"], res["cpu_ms"]
      lines.append(
          f"| {name} | {res['batch']} | {args.rounds} x {res['steps']} | "
          + " | ".join(f"{med[n]:.1f}" for n in names) +
          f" | {fmt(ratio['torch'])} | {fmt(ratio['flax'])} | {fmt(ratio['xmodal@before'])} | "
          + " / ".join(f"{cpu[n]:.0f}" for n in names) + " | "
          + " / ".join(f"{first[n]:.0f}" for n in names) + " |")
    lines += ["", "The four steps run in turn, one timing window each per round, the order "
              "rotating every round. `xmodal` is the step `xmodal train` runs "
              "(`train.jit_train_step`); `xmodal@before` the same step with the Dense layers' "
              "matmul as before this benchmark's change (flax's `lax.dot_general`); `flax` a "
              "minimal Flax two-tower step written in the tool; `torch` `transformers`' "
              "`CLIPModel` (same widths, depths, heads, tanh GELU; it adds a class token) with "
              "`torch.optim.AdamW`. Ratios: median of the per-round ratios (range in "
              "brackets); examples/s: medians over rounds; CPU ms per example: the process's "
              "CPU time over all its threads (threads spinning while they wait count too), "
              "which the machine's load moves far less than wall time. First step: trace + "
              "compile + one step (torch: its first eager step)."]
  if costs:
    first = args.sizes.split(",")[0]
    lines += ["", f"## The compiled step ({first} size)", "",
              "XLA's cost analysis of each compiled step (deterministic, load-free):", "",
              "| step | GFLOP | GB accessed | ops in the program |", "|---|---:|---:|---:|"]
    for name, (flops, gb, ops) in costs["step"].items():
      lines.append(f"| {name} | {flops:.0f} | {gb:.1f} | {ops} |")
    shapes = sorted({(k, n) for _, k, n in costs["kernel"]})
    m = costs["m"]
    lines += ["", f"The kernel gradient of a Dense layer alone, M = {m} image tokens, GFLOP per "
              "CPU-second (`lax.dot_general` on XLA:CPU):", "",
              "| form | " + " | ".join(f"K={k}, N={n}" for k, n in shapes) + " |",
              "|---|" + "---:|" * len(shapes)]
    for form in KERNEL_FORMS:
      lines.append(f"| {form} | " + " | ".join(
          f"{costs['kernel'][(form, k, n)]:.0f}" for k, n in shapes) + " |")
  if breakdowns:
    cols = list(breakdowns)
    lines += ["", f"## Where the time goes ({args.sizes.split(',')[0]} size, ms per step)", "",
              f"From a `jax.profiler` trace of {PROFILE_STEPS} steps: each XLA op's fastest run "
              f"of the {PROFILE_STEPS} "
              "(machine load drops out), summed by what the op computes (its HLO opcodes) and "
              "by phase (its jax name stack: forward, backward, or the optimizer and the "
              "rest). With several threads, ops that run at the same time both count.", "",
              "| op kind | phase | " + " | ".join(cols) + " |",
              "|---|---|" + "---:|" * len(cols)]
    keys = sorted({k for b in breakdowns.values() for k in b["ms"]},
                  key=lambda k: -max(b["ms"].get(k, 0.0) for b in breakdowns.values()))
    for k in keys:
      if max(b["ms"].get(k, 0.0) for b in breakdowns.values()) >= 0.5:
        lines.append(f"| {k[0]} | {k[1]} | " + " | ".join(
            f"{breakdowns[c]['ms'].get(k, 0.0):.0f}" for c in cols) + " |")
    lines.append("| **sum of ops** | | " + " | ".join(
        f"**{sum(breakdowns[c]['ms'].values()):.0f}**" for c in cols) + " |")
    lines.append("| step wall time while traced | | " + " | ".join(
        f"{breakdowns[c]['wall_ms']:.0f}" for c in cols) + " |")
  if loop:
    lines += ["", "## The train loop: how long the device waits", "",
              f"`xmodal train` on the embedded shapes data at the tiny size "
              f"({loop[True]['steps']} timed steps; logs every 6, evaluation and a checkpoint "
              "after step 12) under the profiler: the time no train step runs on the device, "
              "from the end of the first (compiling) step to the end of the last. *before*: "
              "each batch is put on the device by the loop's thread when the step asks for it "
              "(`prefetch.to_device` replaced by a plain map); *prefetch*: `xmodal/prefetch.py`.",
              "", "| loop | device waits (all) | outside evaluation + checkpoint | "
              "evaluation + checkpoint gap / evaluation alone | median gap after a log step | "
              "median gap after other steps | step |", "|---|---:|---:|---:|---:|---:|---:|"]
    for key, label in ((False, "before"), (True, "prefetch")):
      r = loop[key]
      lines.append(f"| {label} | {r['wait']:.1%} | {r['wait_outside_eval']:.2%} | "
                   f"{r['eval_gap_s']:.1f} s / {r['eval_s']:.1f} s | {r['log_gap_ms']:.0f} ms "
                   f"| {r['gap_ms']:.0f} ms | {r['step_ms']:.0f} ms |")
  lines += ["", NOTES]
  return "\n".join(lines) + "\n"


NOTES = """## What each change bought, and what was measured and left alone

- **Dense kernel gradient on CPU** (`layers.dense_dot_general`, the only change to the step).
  From autodiff's transpose rule XLA:CPU copies each Dense layer's output gradient transposed
  and computes the kernel gradient as a doubly transposed Eigen matmul, the slow form of the
  kernel table. Stating the kernel gradient as one 2-D product over the flattened rows in a
  `custom_vjp` (when K > N as its transpose, so the wide side is the output's rows) removes
  the copies and the slow form: the `xmodal / xmodal@before` column, the bytes of the cost
  table, and the Eigen backward rows of the breakdown.
  Same math: values and gradients agree to float32 rounding (tests/test_layers.py, also a
  whole train step). Used on CPU only. Its outputs carry a checkpoint name that
  `remat="dots"` saves (a `custom_vjp` hides its matmul from the dots policy; without the
  name "dots" recomputed every Dense layer, as "full" does; tests/test_layers.py).
- **Prefetch to the device** (`xmodal/prefetch.py`, a few lines in `train.py`): the loop
  table. It shortens the gap after an ordinary step (the batch is already on the device) and
  lets the evaluation + checkpoint gap shrink to about the evaluation's own time. On a
  CPU-only machine the host and the "device" share the cores, so the input pipeline's work
  is not free even when it overlaps, and the totals move with the machine's load; on GPUs
  the transfer and the host work leave the step's critical path.
- **Not done: the gap after a log step.** Fetching the metrics waits for that step to end,
  and the next step is dispatched only after the host has written the log line, so the
  device idles for the host's logging (a few hundred ms under load here, once per
  `train.log_every` steps). Dispatching the next step before fetching would remove it.
- **Measured, bought nothing, left as is**: the objective's `shard_map` and collectives on a
  one-device mesh (`loss.impl="dense"` row of the cost table: the same bytes, a few more ops),
  the sharding constraints (no-ops on one device), gradient clipping and the weight-decay
  mask (under 1% of bytes), splitting q/k/v with `jnp.split` or an einsum attention in
  another layout (within 1% of CPU time), and XLA:CPU flags (`--xla_cpu_use_onednn`,
  `--xla_cpu_opt_preset=CPU_OPT_PRESET_FAST_RUNTIME`: no gain; disabling YNNPACK fusions:
  20-30% slower). fp32 matmuls are full precision on CPU (no TF32 there); remat and scan
  are off by default (`none`, `False`).
- **Reading the tables on a shared machine**: the ex/s columns and their ratios move with
  whatever else runs (the load average is in the header; the ranges are in brackets); the CPU
  ms per example and the cost table move far less. The breakdown's "fastest run" removes
  only part of the load: compare its rows between columns (the layout and Eigen rows the
  change removes), not its sums against the speed table.
- **Metrics** are fetched only at log steps (one `device_get` of the steps since the last
  log); evaluation and checkpoints stall the loop for their own time (the gap column), with
  the prefetch threads filling meanwhile; checkpoints are written asynchronously."""


def gpu_report(rows: list[dict], check: dict, size_name: str, dry: bool) -> str:
  size = SIZES[size_name]
  lines = [f"# GPU train step: two-tower ({size_name}), bf16" + (
               " (dry run: the script's path on this backend, toy sizes)" if dry else ""), "",
           f"`python tools/bench_step.py --gpu{' --dry' if dry else ''}` on {rows[0]['devices']} "
           f"x {rows[0]['kind']} (jax {jax.__version__}): image {size.image} px / patch "
           f"{size.patch}, width {size.width}, depth {size.depth}; text {size.context} tokens, "
           f"width {size.text_width}, depth {size.text_depth}; batch {size.batch} per device. "
           "MFU = model FLOPs (6 x matmul params x tokens + attention; remat's recomputation "
           "not counted) / dense bf16 peak of the device kind.", "",
           "| remat | attention | examples/s | per device | TFLOP/s per device | MFU | "
           "compile (s) |", "|---|---|---:|---:|---:|---:|---:|"]
  for r in rows:
    mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "n/a (unknown peak)"
    lines.append(f"| {r['remat']} | {r['attention']} | {r['examples_per_s']:.1f} | "
                 f"{r['per_device']:.1f} | {r['tflops']:.1f} | {mfu} | {r['compile_s']:.1f} |")
  lines += ["", f"Attention check ({check['implementation']} against XLA, bf16): max |output "
            f"difference| {check['out']:.3g} (outputs up to {check['scale']:.3g}), max |input "
            f"gradient difference| {check['grad']:.3g}."]
  return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------- main

def _pin_threads(threads: int) -> None:
  """Pins this process to `threads` cores before JAX creates its thread pool."""
  cores = sorted(os.sched_getaffinity(0))
  if threads < len(cores):
    os.sched_setaffinity(0, cores[:threads])


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--sizes", default="tiny,s16", help="comma-separated: " + ",".join(SIZES))
  ap.add_argument("--rounds", type=int, default=5)
  ap.add_argument("--steps", type=int, default=0,
                  help="steps per timing window; 0: as many as take ~10 s (1 to 5)")
  ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
  ap.add_argument("--batch", type=int, default=0, help="override every size's batch")
  ap.add_argument("--short", action="store_true", help="tiny only, 3 rounds of 3 steps")
  ap.add_argument("--sections", default="time,costs,profile,loop",
                  help="time (alternating rounds), costs (tiny: XLA cost analysis of step "
                       "variants), profile (tiny: op breakdown), loop (device wait in "
                       "`xmodal train`)")
  ap.add_argument("--gpu", action="store_true", help="the GPU benchmark (ViT-B/16, bf16)")
  ap.add_argument("--dry", action="store_true", help="with --gpu: toy sizes, any backend")
  ap.add_argument("--out", default="")
  args = ap.parse_args(argv)
  args.argv = list(sys.argv[1:] if argv is None else argv)
  if args.gpu:
    name = "toy" if args.dry else "b16"
    print(f"GPU benchmark, size {name}, {1 if args.dry else jax.device_count()} x "
          f"{jax.devices()[0].device_kind}", flush=True)
    rows, check = gpu_bench(SIZES[name], 2 if args.dry else 10, args.dry)
    text = gpu_report(rows, check, name, args.dry)
    out = args.out or ("" if args.dry else "docs/benchmarks/step_gpu.md")
  else:
    if args.short:
      args.sizes, args.rounds = "tiny", 3
    _pin_threads(args.threads)
    sections = args.sections.split(",")
    results, breakdowns, loop, costs = {}, {}, None, None
    for name in args.sizes.split(","):
      size = SIZES[name]
      batch = args.batch or size.batch
      print(f"size {name}: building", flush=True)
      runners = [XmodalStep(xmodal_config(size, batch)),
                 XmodalStep(xmodal_config(size, batch), before=True), FlaxStep(size, batch)]
      if "time" in sections:
        runners.append(TorchStep(size, batch, args.threads))
        first = compile_and_time(runners)
        steps = args.steps or max(1, min(5, round(10.0 / runners[0].run(1))))  # ~10 s windows
        results[name] = {**summarize(*alternate(runners, args.rounds, steps, batch)),
                         "first": first, "batch": batch, "steps": steps}
      if "costs" in sections and name == args.sizes.split(",")[0]:
        tokens = batch * (size.image // size.patch) ** 2
        costs = {"step": compiled_costs(size, batch, runners), "m": tokens,
                 "kernel": kernel_forms(tokens,
                                        [(size.width, 3 * size.width), (size.width, size.mlp),
                                         (size.mlp, size.width)])}
      if "profile" in sections and name == args.sizes.split(",")[0]:
        for r in runners[:3]:
          with tempfile.TemporaryDirectory() as d:
            breakdowns[r.name] = profile(r, PROFILE_STEPS, d)
          print(f"  {r.name} breakdown (ms/step): " + ", ".join(
              f"{k[0]}/{k[1]} {v:.0f}" for k, v in sorted(breakdowns[r.name]["ms"].items())),
              flush=True)
      del runners
    if "loop" in sections:
      loop = {}
      for prefetched in (False, True):
        with tempfile.TemporaryDirectory() as work, tempfile.TemporaryDirectory() as logs:
          loop[prefetched] = loop_wait(SIZES["tiny"], 24, work, logs, prefetched)
        print(f"  loop (prefetch={prefetched}): {loop[prefetched]}", flush=True)
    text = cpu_report(results, breakdowns, loop, costs, args)
    out = args.out or "docs/benchmarks/step.md"
  print(text)
  if out:
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    with open(out, "w") as f:
      f.write(text)


if __name__ == "__main__":
  main()
