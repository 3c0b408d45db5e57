"""Input benchmark for the other modalities: records per CPU-second (one core) of the
pipeline's own preparation (`pipeline.Preprocess`, training mode: read, decode, crop /
sample / resample, log-mel...) for

  audio    10 s WAV clips (16 kHz mono, in files named by a JSONL manifest) -> log-mel
           [1000, 64] (window 400, hop 160), and the same clips stored at 44.1 kHz stereo
           (mixed to mono, resampled by soxr);
  video    8 frames sampled from 2 s MP4 clips (256x256 at 24 fps, MPEG-4 part 2) -> uint8
           [8, 224, 224, 3];
  volume   64^3 NIfTI volumes (.nii.gz) -> float32 [64, 64, 64], and the same resampled
           to [32, 96, 96];
  vector   20,000-gene expression rows from a Parquet list column and from an AnnData
           .h5ad (sparse, 10% non-zero) -> float32 [20000] (log1p).

    PYTHONPATH=. python tools/bench_input_modalities.py [--records 64] \\
        [--out docs/benchmarks/input_modalities.md]

Prints a markdown table and writes it to --out. Rates are per CPU-second of this process
(`time.process_time`), so other jobs on the machine slow the wall clock, not the rate.
"""

import argparse
import json
import os
import platform
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402


def _config(towers: dict, source: str, pattern: str, **data):
  from xmodal import default_config
  c = default_config.get_config()
  text = c.towers.text
  c.towers = default_config.ConfigDict({**towers, "text": text})
  c.data.source, c.data.train_files, c.data.eval_files = source, pattern, pattern
  for k, v in data.items():
    c.data[k] = v
  return c


def _tower(kind, **fields):
  from xmodal import default_config
  t = default_config.tower_defaults(kind)
  t.update(fields)
  return t


def write_audio(folder, n, rate, channels):
  import soundfile as sf
  rng = np.random.default_rng(0)
  rows = []
  for i in range(n):
    t = np.arange(10 * rate) / rate
    wave = 0.3 * np.sin(2 * np.pi * (200 + 20 * i) * t)[:, None] + rng.normal(
        0, 0.05, (len(t), channels))
    path = os.path.join(folder, f"a{rate}_{channels}_{i}.wav")
    sf.write(path, wave, rate, subtype="PCM_16")
    rows.append({"audio": os.path.basename(path), "caption": f"clip {i}"})
  manifest = os.path.join(folder, f"audio_{rate}_{channels}.jsonl")
  with open(manifest, "w") as f:
    f.write("\n".join(json.dumps(r) for r in rows))
  return manifest


def write_video(folder, n):
  import av
  rng = np.random.default_rng(0)
  rows = []
  for i in range(n):
    path = os.path.join(folder, f"v{i}.mp4")
    with av.open(path, mode="w") as container:
      stream = container.add_stream("mpeg4", rate=24)
      stream.width = stream.height = 256
      stream.pix_fmt = "yuv420p"
      base = rng.integers(0, 200, (256, 256, 3))
      for k in range(48):
        frame = np.clip(np.roll(base, 4 * k, axis=1) + k, 0, 255).astype(np.uint8)
        container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, "rgb24")))
      container.mux(stream.encode())
    rows.append({"video": os.path.basename(path), "caption": f"clip {i}"})
  manifest = os.path.join(folder, "video.jsonl")
  with open(manifest, "w") as f:
    f.write("\n".join(json.dumps(r) for r in rows))
  return manifest


def write_volumes(folder, n):
  import nibabel as nib
  rng = np.random.default_rng(0)
  rows = []
  for i in range(n):
    path = os.path.join(folder, f"s{i}.nii.gz")
    nib.save(nib.Nifti1Image(rng.normal(0, 1, (64, 64, 64)).astype(np.float32), np.eye(4)),
             path)
    rows.append({"volume": os.path.basename(path), "caption": f"scan {i}"})
  manifest = os.path.join(folder, "volume.jsonl")
  with open(manifest, "w") as f:
    f.write("\n".join(json.dumps(r) for r in rows))
  return manifest


def write_vectors(folder, n, genes=20_000):
  import anndata
  import pandas as pd
  import pyarrow as pa
  import pyarrow.parquet as pq
  import scipy.sparse
  rng = np.random.default_rng(0)
  x = scipy.sparse.random(n, genes, density=0.1, format="csr", random_state=0,
                          data_rvs=lambda k: rng.poisson(3, k) + 1).astype(np.float32)
  dense = x.toarray()
  pq.write_table(pa.table({"vector": [row for row in dense],
                           "caption": [f"cell {i}" for i in range(n)]}),
                 os.path.join(folder, "genes.parquet"))
  adata = anndata.AnnData(X=x, obs=pd.DataFrame({"caption": [f"cell {i}" for i in range(n)]},
                                                index=[str(i) for i in range(n)]),
                          var=pd.DataFrame(index=[f"g{i}" for i in range(genes)]))
  adata.write_h5ad(os.path.join(folder, "genes.h5ad"))
  return os.path.join(folder, "genes.parquet"), os.path.join(folder, "genes.h5ad")


def per_core(config, min_seconds: float) -> tuple[float, float]:
  """(records per CPU-second, records per wall-second) of Preprocess over the source."""
  from xmodal.data import pipeline
  source = pipeline.make_source(config, "train")
  prep = pipeline.preprocess_for(config, train=True)
  rng = np.random.default_rng(0)
  out = prep.random_map(source[0], rng)             # warm-up (imports, caches)
  assert "_bad" not in out, out
  n, cpu0, wall0 = 0, time.process_time(), time.perf_counter()
  while time.process_time() - cpu0 < min_seconds:
    out = prep.random_map(source[n % len(source)], rng)
    assert "_bad" not in out, out
    n += 1
  return n / (time.process_time() - cpu0), n / (time.perf_counter() - wall0)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--records", type=int, default=32)
  parser.add_argument("--seconds", type=float, default=5.0)
  parser.add_argument("--shared", default="yes", help="were other jobs using the cores?")
  parser.add_argument("--out", default="docs/benchmarks/input_modalities.md")
  args = parser.parse_args()
  import av
  import nibabel
  import soundfile
  import soxr
  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    n = args.records
    audio16 = write_audio(tmp, n, 16000, 1)
    audio44 = write_audio(tmp, n, 44100, 2)
    video = write_video(tmp, n)
    volume = write_volumes(tmp, n)
    parquet, h5ad = write_vectors(tmp, max(n, 256))
    mel = dict(frames=1000, n_mels=64, sample_rate=16000, n_fft=400, hop=160)
    cases = [
        ("audio: 10 s WAV, 16 kHz mono -> log-mel [1000, 64]",
         _config({"audio": _tower("audio", **mel)}, "manifest", audio16)),
        ("audio: 10 s WAV, 44.1 kHz stereo -> mono, resampled (soxr), log-mel [1000, 64]",
         _config({"audio": _tower("audio", **mel)}, "manifest", audio44)),
        ("video: 8 of 48 frames (2 s, 256x256 MPEG-4) -> [8, 224, 224, 3]",
         _config({"video": _tower("video", frames=8, patch_size=16)}, "manifest", video,
                 image_size=224)),
        ("volume: 64^3 NIfTI (.nii.gz) -> [64, 64, 64]",
         _config({"volume": _tower("volume", slices=64, size=64)}, "manifest", volume)),
        ("volume: 64^3 NIfTI (.nii.gz) -> resampled [32, 96, 96]",
         _config({"volume": _tower("volume", slices=32, size=96)}, "manifest", volume)),
        ("vector: 20,000 genes, Parquet list column -> log1p [20000]",
         _config({"vector": _tower("vector", features=20_000, transform="log1p")}, "manifest",
                 parquet)),
        ("vector: 20,000 genes, .h5ad row (sparse X, 10% non-zero) -> log1p [20000]",
         _config({"vector": _tower("vector", features=20_000, transform="log1p",
                                   field="expression")}, "h5ad", h5ad)),
    ]
    for name, config in cases:
      cpu_rate, wall_rate = per_core(config, args.seconds)
      print(f"{name}: {cpu_rate:.0f} records/CPU-s ({wall_rate:.0f}/s wall)", flush=True)
      rows.append((name, cpu_rate, wall_rate))
  shared = ("**shared with other jobs**: the per-CPU-second column is what to compare; the "
            "wall-clock column is lower by the share other jobs took"
            if args.shared == "yes" else "not shared with other jobs")
  table = "\n".join([
      "# Input benchmark: audio, video, volumes, vectors", "",
      f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. Machine: {os.cpu_count()} CPU "
      f"cores ({platform.machine()}), Python {platform.python_version()}, soundfile "
      f"{soundfile.__version__} (libsndfile {soundfile.__libsndfile_version__}), soxr "
      f"{soxr.__version__}, PyAV {av.__version__}, nibabel {nibabel.__version__}; {shared}. "
      f"{args.records} records per case, each case timed for {args.seconds:g} CPU-seconds. "
      f"Command: `PYTHONPATH=. python tools/bench_input_modalities.py`.", "",
      "| case | records / CPU-second (one core) | records / s wall |", "|---|---:|---:|",
      *[f"| {name} | {cpu:.0f} | {wall:.0f} |" for name, cpu, wall in rows], "",
      "Work per record: what the training pipeline does (`pipeline.Preprocess`, training "
      "mode) after the source returns the row: read the file the manifest names (or the "
      "h5ad row), decode it with the decoder's library, then the tower kind's preparation "
      "(audio: mono mix, resampling where the rate differs, a random 10 s window, log-mel "
      "in numpy; video: 8 frame indices drawn one per segment, decoding up to the last one, "
      "resize + centre crop; volume: linear resampling and standardisation; vector: length "
      "check and log1p) plus tokenising the caption. One thread, no grain workers: the "
      "pipeline's `data.num_workers` worker processes scale it by the cores given.", ""])
  print(table)
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, "w") as f:
    f.write(table)


if __name__ == "__main__":
  main()
