"""tools/bench_step.py: the GPU script's whole path at toy sizes on CPU (`--gpu --dry`), the
MFU numerator against XLA's own FLOP count, the peak lookup, and the trace-based breakdown."""

import os
import sys

import jax
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))

import bench_step  # noqa: E402


@pytest.mark.slow
def test_gpu_script_dry_run_writes_its_table(tmp_path):
  out = tmp_path / "gpu.md"
  bench_step.main(["--gpu", "--dry", "--out", str(out)])
  text = out.read_text()
  rows = [line for line in text.splitlines() if line.startswith("| none") or
          line.startswith("| full")]
  assert len(rows) == 2                                   # CPU: no cuDNN row to compare
  for row in rows:
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == "xla" and float(cells[2]) > 0 and cells[5].startswith("n/a")
  assert "Attention check (xla against XLA" in text and "difference| 0 " in text


def test_model_flops_is_xla_flop_count_of_the_step():
  """6 x params x tokens + attention against XLA's cost analysis of the unrolled float32 step
  (which also counts norms, softmax, the loss and AdamW: a little above)."""
  size = bench_step.dataclasses.replace(bench_step.SIZES["tiny"], depth=2, text_depth=2,
                                        batch=8)
  step = bench_step.XmodalStep(bench_step.xmodal_config(size, size.batch),
                               devices=jax.devices()[:1])
  with step.context():
    compiled = step.step.lower(step.state, step.batch).compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  ratio = cost["flops"] / bench_step.model_flops(size, size.batch)
  assert 1.0 <= ratio < 1.1, ratio


def test_peak_lookup_by_device_kind():
  assert bench_step.peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
  assert bench_step.peak_tflops("NVIDIA H200") == 989.0
  assert bench_step.peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0
  assert bench_step.peak_tflops("cpu") is None


def test_profile_breakdown_finds_the_matmuls_in_both_passes(tmp_path):
  size = bench_step.SIZES["toy"]
  flax_step = bench_step.FlaxStep(size, 16)
  flax_step.run(1)
  result = bench_step.profile(flax_step, 2, str(tmp_path))
  ms, total = result["ms"], sum(result["ms"].values())
  assert result["ops"] > 20 and 0 < total <= result["wall_ms"] * os.cpu_count()
  by_kind = {}
  for (kind, _), value in ms.items():
    kind = "matmul" if kind.startswith("matmul") else kind
    by_kind[kind] = by_kind.get(kind, 0.0) + value
  assert max(by_kind, key=by_kind.get) == "matmul"
  for phase in ("forward", "backward"):
    assert sum(v for (kind, p), v in ms.items() if kind.startswith("matmul") and p == phase) > 0


@pytest.mark.slow
def test_cpu_comparison_runs_at_toy_size_and_writes_its_tables(tmp_path):
  out = tmp_path / "step.md"
  bench_step.main(["--sizes", "toy", "--rounds", "1", "--steps", "1",
                   "--sections", "time,costs", "--out", str(out)])
  text = out.read_text()
  row = next(line for line in text.splitlines() if line.startswith("| toy |"))
  cells = [c.strip() for c in row.strip("|").split("|")]
  rates = [float(c) for c in cells[3:7]]                  # xmodal, before, flax, torch ex/s
  assert all(r > 0 for r in rates)
  assert cells[7].startswith("**") and "x**" in cells[7]  # xmodal / torch
  for section in ("## The compiled step (toy size)", "x^T g (rows contracted; the fast path)",
                  "## What each change bought"):
    assert section in text, section
