"""Input-pipeline benchmark: decode + random-resized-crop + CLIP normalise from 512-pixel
JPEGs stored as a webdataset tar, ArrayRecord shards and a manifest of files.

    PYTHONPATH=. python tools/bench_input.py [--images 1024] [--out docs/benchmarks/input.md]

Measures
  * per core: one thread, no grain, reading record i from the source and running the
    pipeline's own `Preprocess` (reduced-scale JPEG decode, crop to 224, float32 CLIP
    normalisation, tokenisation), against a baseline that decodes the same JPEG bytes at
    full size with PIL, crops, resizes to 224 and normalises;
  * the grain pipeline (`pipeline.train_dataset`, batch 1,024, one decode thread per
    worker) with 1 and 2 worker processes: images/s in steady state, images/s per worker,
    and the time from creating the iterator to the first batch of 1,024 being ready.
  * large images (--large): per image, the pipeline's `Preprocess` (crop to 224) on a
    4096-pixel JPEG, PNG and transparent PNG against the PIL baseline; the resize alone for
    a 4096 -> 64 and 4096 -> 224 downscale (ours, the Gaussian-only resize it replaced,
    OpenCV INTER_AREA, PIL with and without `reducing_gap`) with PSNR against PIL's full
    antialiased bilinear; and the time to skip a 10,561 x 16,000 PNG over
    `data.max_image_pixels` from its header.
Prints markdown tables and writes them to --out.
"""

import argparse
import io
import json
import os
import platform
import sys
import tarfile
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402


def photo_paths() -> list[str]:
  """Real photographs shipped inside installed packages: matplotlib's sample
  grace_hopper.jpg (matplotlib is a dependency) and scikit-learn's china/flower.jpg."""
  import matplotlib
  paths = [os.path.join(matplotlib.get_data_path(), "sample_data", "grace_hopper.jpg")]
  try:
    import sklearn
    folder = os.path.join(os.path.dirname(sklearn.__file__), "datasets", "images")
    paths += [os.path.join(folder, n) for n in ("china.jpg", "flower.jpg")]
  except ImportError:
    pass
  return [p for p in paths if os.path.exists(p)]


def make_jpeg(seed: int, size: int, photos) -> bytes:
  """A size x size JPEG (quality 90) cut from a real photo: random crop of 40-100% of its
  area, resized, randomly flipped and colour-jittered, so every image differs."""
  from PIL import ImageEnhance
  from xmodal.data import transforms
  rng = np.random.default_rng(seed)
  photo = photos[seed % len(photos)]
  x0, y0, w, h = transforms.sample_crop(*photo.size, rng, (0.4, 1.0), (0.8, 1.25))
  img = photo.resize((size, size), Image.BICUBIC, box=(x0, y0, x0 + w, y0 + h))
  if rng.random() < 0.5:
    img = img.transpose(Image.FLIP_LEFT_RIGHT)
  img = ImageEnhance.Color(img).enhance(rng.uniform(0.6, 1.4))
  img = ImageEnhance.Brightness(img).enhance(rng.uniform(0.8, 1.2))
  buf = io.BytesIO()
  img.save(buf, "JPEG", quality=90)
  return buf.getvalue()


def write_corpus(folder: str, n: int, size: int) -> dict:
  from array_record.python import array_record_module
  from xmodal.data import sources
  photos = [Image.open(p).convert("RGB") for p in photo_paths()]
  images = [make_jpeg(i, size, photos) for i in range(n)]
  os.makedirs(os.path.join(folder, "files"), exist_ok=True)
  with open(os.path.join(folder, "manifest.jsonl"), "w") as m:
    for i, data in enumerate(images):
      with open(os.path.join(folder, "files", f"{i:06d}.jpg"), "wb") as f:
        f.write(data)
      m.write(json.dumps({"image": f"files/{i:06d}.jpg", "caption": f"image number {i}"}) + "\n")
  with tarfile.open(os.path.join(folder, "shard-000.tar"), "w") as tf:
    for i, data in enumerate(images):
      for ext, payload in (("jpg", data), ("txt", f"image number {i}".encode())):
        info = tarfile.TarInfo(f"{i:06d}.{ext}")
        info.size = len(payload)
        tf.addfile(info, io.BytesIO(payload))
  writer = array_record_module.ArrayRecordWriter(
      os.path.join(folder, "shard-00000.arrayrecord"), "group_size:1")
  for i, data in enumerate(images):
    writer.write(sources.encode_record(data, f"image number {i}"))
  writer.close()
  return {"images": images,
          "formats": {"webdataset": ("webdataset", os.path.join(folder, "shard-000.tar")),
                      "arrayrecord": ("arrayrecord",
                                      os.path.join(folder, "shard-00000.arrayrecord")),
                      "manifest (files)": ("manifest",
                                           os.path.join(folder, "manifest.jsonl"))},
          "mean_kb": np.mean([len(x) for x in images]) / 1024,
          "photos": [os.path.basename(p) for p in photo_paths()]}


def bench_config(kind: str, pattern: str, crop: int, batch: int, workers: int,
                 dtype: str = "float32", scale=(0.8, 1.0)):
  from xmodal import default_config
  config = default_config.get_config()
  config.batch_size = batch
  config.towers.image.patch_size = 16
  d = config.data
  d.source, d.train_files, d.eval_files = kind, pattern, pattern
  d.image_size, d.image_dtype = crop, dtype
  d.normalize = "clip" if dtype == "float32" else "none"
  d.crop_scale = scale
  d.num_workers, d.read_threads = workers, 1
  return config


def per_core(contenders: dict, min_seconds: float, chunk: int = 16) -> dict:
  """{name: (fn, items)} -> {name: images per CPU-second}. One thread; the contenders
  take turns in chunks of `chunk` images (the same number each) so that changes in the
  load of a shared machine hit all of them alike, until one has run min_seconds of CPU
  time. Process CPU time, not wall time, so waiting for a core does not count."""
  used = {k: 0.0 for k in contenders}
  done = {k: 0 for k in contenders}
  pos = {k: 0 for k in contenders}
  for fn, items in contenders.values():
    fn(items[0])                             # warm-up
  while max(used.values()) < min_seconds:
    for name, (fn, items) in contenders.items():
      batch = [items[(pos[name] + i) % len(items)] for i in range(chunk)]
      t0 = time.process_time()
      for x in batch:
        fn(x)
      used[name] += time.process_time() - t0
      done[name] += chunk
      pos[name] += chunk
  return {k: done[k] / used[k] for k in contenders}


def baseline_fn(crop: int, scale):
  from xmodal.data import transforms
  rng = np.random.default_rng(0)

  def fn(data: bytes):
    img = Image.open(io.BytesIO(data)).convert("RGB")        # full-size decode
    x0, y0, w, h = transforms.sample_crop(*img.size, rng, scale)
    pixels = np.asarray(img.resize((crop, crop), Image.BILINEAR, box=(x0, y0, x0 + w, y0 + h)))
    return transforms.finalize(pixels, "float32", "clip")   # the same normalisation code
  return fn


def fast_fn(config, source):
  from xmodal.data import pipeline
  prep = pipeline.preprocess_for(config, train=True)
  rng = np.random.default_rng(0)

  def fn(index: int):
    out = prep.random_map(source[index], rng)
    assert "_bad" not in out, out
    return out
  return fn


def quality(images, crop: int, scale) -> float:
  """Mean PSNR (dB) of the fast path's crops against PIL's full-size decode + antialiased
  bilinear resize of the same boxes (`transforms.reference_random_crop`)."""
  from xmodal.data import transforms
  values = []
  for i, data in enumerate(images):
    fast = transforms.decode_random_crop(data, crop, np.random.default_rng(i), scale)
    ref = transforms.reference_random_crop(data, crop, np.random.default_rng(i), scale)
    mse = np.mean((fast.astype(np.float64) - ref) ** 2)
    values.append(10 * np.log10(255.0 ** 2 / max(mse, 1e-10)))
  return float(np.mean(values))


def pipeline_run(config, batches: int) -> tuple[float, float]:
  """(seconds to the first batch, steady-state images/s over the next `batches`)."""
  from xmodal.data import pipeline
  t0 = time.perf_counter()
  it = iter(pipeline.train_dataset(config))
  first = next(it)
  t_first = time.perf_counter() - t0
  assert first["image"].shape[0] == config.batch_size
  t1 = time.perf_counter()
  for _ in range(batches):
    next(it)
  rate = batches * config.batch_size / (time.perf_counter() - t1)
  if hasattr(it, "close"):
    it.close()
  return t_first, rate


def _gaussian_only(pixels, width: int, height: int):
  """The resize before the box pre-reduction (for comparison): a Gaussian blur of the
  variance PIL's widened triangle filter adds, at any ratio, then cv2 bilinear."""
  import math
  import cv2
  sx, sy = pixels.shape[1] / width, pixels.shape[0] / height
  sigma_x = math.sqrt((sx * sx - 1) / 6) if sx > 1 else 1e-3
  sigma_y = math.sqrt((sy * sy - 1) / 6) if sy > 1 else 1e-3
  pixels = cv2.GaussianBlur(pixels, (0, 0), sigmaX=sigma_x, sigmaY=sigma_y)
  return cv2.resize(pixels, (width, height), interpolation=cv2.INTER_LINEAR)


def _cpu_ms(fn, x, repeats: int) -> float:
  """Mean process CPU milliseconds of fn(x) over `repeats` calls (after one warm-up)."""
  fn(x)
  t0 = time.process_time()
  for _ in range(repeats):
    fn(x)
  return (time.process_time() - t0) / repeats * 1000


def _psnr(a, b) -> float:
  mse = np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2)
  return float(10 * np.log10(255.0 ** 2 / max(mse, 1e-10)))


def large_image_tables(crop: int, repeats: int) -> list[str]:
  """Markdown lines: the large-image rows (module docstring)."""
  import cv2
  from xmodal import default_config
  from xmodal.data import pipeline, tokenizer, transforms
  photo = Image.open(photo_paths()[0]).convert("RGB")
  big = photo.resize((4096, 4096), Image.BICUBIC)
  pixels = np.asarray(big)
  encoded = {}
  for name, img, fmt in (("JPEG 4096x4096 (q90)", big, "JPEG"), ("PNG 4096x4096", big, "PNG")):
    buf = io.BytesIO()
    img.save(buf, fmt, **({"quality": 90} if fmt == "JPEG" else {"compress_level": 1}))
    encoded[name] = buf.getvalue()
  rgba = np.dstack([pixels, np.where(np.hypot(*np.mgrid[-1:1:4096j, -1:1:4096j]) < 0.8,
                                     255, 0).astype(np.uint8)])
  buf = io.BytesIO()
  Image.fromarray(rgba, "RGBA").save(buf, "PNG", compress_level=1)
  encoded["PNG 4096x4096 RGBA (transparent corners)"] = buf.getvalue()
  config = default_config.get_config()
  config.data.image_size = crop
  prep = pipeline.Preprocess(image_key="image", text_key="text", image_size=crop,
                             tokenizer=tokenizer.ByteTokenizer(16), train=True)
  rng = np.random.default_rng(0)
  lines = ["", "## Large images", "",
           f"Per image, process CPU time (mean of {repeats} after a warm-up): the pipeline's "
           f"`Preprocess` (random resized crop to {crop}, crop scale 0.8-1) against the "
           f"baseline (PIL full decode, PIL antialiased bilinear crop + resize). PNGs "
           f"decode whole in both, and the decode dominates; the baseline drops the alpha "
           f"channel (transparent corners turn black) where the pipeline composites it.", "",
           "| image | size | pipeline (ms/image) | baseline PIL (ms/image) | speed-up |",
           "|---|---:|---:|---:|---:|"]
  base = baseline_fn(crop, (0.8, 1.0))
  for name, data in encoded.items():
    ours = _cpu_ms(lambda d: prep.random_map({"image": d, "caption": "x"}, rng), data, repeats)
    ref = _cpu_ms(base, data, repeats)
    lines.append(f"| {name} | {len(data) / 2**20:.1f} MB | {ours:.0f} | {ref:.0f} | "
                 f"{ref / ours:.1f}x |")
    print(lines[-1], flush=True)

  lines += ["", "Resize alone, uint8 RGB 4096x4096 (the photo above) to a square: process "
            "CPU ms per call and PSNR against PIL's antialiased bilinear without "
            "`reducing_gap` (the reference the tests use).", "",
            "| resize | to 64 (ms) | to 64 PSNR (dB) | to 224 (ms) | to 224 PSNR (dB) |",
            "|---|---:|---:|---:|---:|"]
  contenders = {
      "xmodal `transforms.resize` (box reduction, then Gaussian + bilinear)": transforms.resize,
      "Gaussian + bilinear at any ratio (before this change)": _gaussian_only,
      "OpenCV INTER_AREA": lambda p, w, h: cv2.resize(p, (w, h), interpolation=cv2.INTER_AREA),
      "PIL bilinear, reducing_gap=2": lambda p, w, h: np.asarray(Image.fromarray(p).resize(
          (w, h), Image.BILINEAR, reducing_gap=2.0)),
      "PIL bilinear (reference)": lambda p, w, h: np.asarray(Image.fromarray(p).resize(
          (w, h), Image.BILINEAR)),
  }
  refs = {n: contenders["PIL bilinear (reference)"](pixels, n, n) for n in (64, 224)}
  for name, fn in contenders.items():
    cells = []
    for n in (64, 224):
      reps = 1 if "before" in name or "reference" in name else repeats
      cells += [f"{_cpu_ms(lambda p: fn(p, n, n), pixels, reps):.0f}",
                "-" if "reference" in name else f"{_psnr(fn(pixels, n, n), refs[n]):.1f}"]
    lines.append(f"| {name} | " + " | ".join(cells) + " |")
    print(lines[-1], flush=True)

  huge = io.BytesIO()
  Image.new("L", (10561, 16000), 128).save(huge, "PNG", compress_level=1)
  huge = huge.getvalue()
  limit = config.data.max_image_pixels

  def skip(d):
    try:
      transforms.decode_random_crop(d, crop, rng, max_pixels=limit)
    except transforms.ImageTooLarge:
      return
    raise AssertionError("not refused")
  ms = _cpu_ms(skip, huge, repeats)
  full = _cpu_ms(lambda d: transforms.decode_random_crop(d, crop, rng), huge, 1)
  lines += ["", f"A 10,561 x 16,000 PNG (169M pixels, greyscale, {len(huge) / 2**20:.1f} MB) "
            f"is refused from its header by `data.max_image_pixels` (default "
            f"{limit / 1e6:.0f}M) in **{ms:.2f} ms**, skipped and counted with the reason "
            f"in the log; decoding and cropping it without the limit takes {full:.0f} ms "
            f"(a flat grey image, the cheapest of that size to decode) and ~170 MB of "
            f"memory."]
  print(lines[-1], flush=True)
  return lines


def write_large_only(args):
  """Runs the large-image tables alone and splices them into --out in place of its
  previous large-image section (the other tables stay as measured)."""
  from absl import logging as absl_logging
  absl_logging.set_verbosity(absl_logging.ERROR)
  load_before = os.getloadavg()[0]
  lines = large_image_tables(args.crop, args.large_repeats)
  note = (f"Large images measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on "
          f"{os.cpu_count()} CPU cores, load average {load_before:.1f} at the start"
          + (" (shared with other jobs: absolute times are pessimistic, the ratios within "
             "a row hold)" if args.shared == "yes" else "") + "; command: "
          "`PYTHONPATH=. python tools/bench_input.py --large only`.")
  lines[3:3] = [note, ""]
  before = ""
  if os.path.exists(args.out):
    with open(args.out) as f:
      before = f.read().split("\n## Large images")[0].rstrip("\n") + "\n"
  with open(args.out, "w") as f:
    f.write(before + "\n".join(lines) + "\n")
  print("\n".join(lines))


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--images", type=int, default=1024)
  parser.add_argument("--size", type=int, default=512)
  parser.add_argument("--crop", type=int, default=224)
  parser.add_argument("--batch", type=int, default=1024)
  parser.add_argument("--batches", type=int, default=2, help="steady-state batches timed")
  parser.add_argument("--seconds", type=float, default=4.0, help="per-core timing length")
  parser.add_argument("--workers", default="1,2")
  parser.add_argument("--pipeline_dtype", default="uint8",
                      help="output of the worker runs: uint8 (training default) or float32")
  parser.add_argument("--shared", default="yes", help="were other jobs using the cores?")
  parser.add_argument("--out", default="docs/benchmarks/input.md")
  parser.add_argument("--large", default="yes", help="also the large-image tables; 'only': "
                      "just those, replacing the large-image section of --out")
  parser.add_argument("--large_repeats", type=int, default=5)
  args = parser.parse_args()
  if args.large == "only":
    write_large_only(args)
    return
  from absl import logging as absl_logging
  absl_logging.set_verbosity(absl_logging.ERROR)
  import cv2
  import simplejpeg
  from xmodal.data import pipeline

  scales = {"default (0.8-1)": (0.8, 1.0), "Inception (0.08-1)": (0.08, 1.0)}
  workers = [int(x) for x in args.workers.split(",")]
  load_before = os.getloadavg()
  t_start = time.time()
  with tempfile.TemporaryDirectory() as tmp:
    corpus = write_corpus(tmp, args.images, args.size)
    print(f"{args.images} JPEGs {args.size}x{args.size} from {corpus['photos']}, mean "
          f"{corpus['mean_kb']:.0f} KB", flush=True)
    sample = corpus["images"][: min(256, args.images)]
    cores, psnr = {}, {}
    for sname, sc in scales.items():
      psnr[sname] = quality(sample, args.crop, sc)
      contenders = {"baseline": (baseline_fn(args.crop, sc), sample)}
      for name, (kind, pattern) in corpus["formats"].items():
        config = bench_config(kind, pattern, args.crop, args.batch, 0, "float32", sc)
        source = pipeline.make_source(config, "train")
        contenders[name] = (fast_fn(config, source), list(range(min(256, len(source)))))
      cores[sname] = per_core(contenders, args.seconds)
      print(f"per core, crop scale {sname}: {cores[sname]}", flush=True)
    base = {sname: cores[sname]["baseline"] for sname in scales}
    rows = []
    for name, (kind, pattern) in corpus["formats"].items():
      row = {"format": name, **{sname: cores[sname][name] for sname in scales}}
      for w in workers:
        config = bench_config(kind, pattern, args.crop, args.batch, w, args.pipeline_dtype)
        row[w] = pipeline_run(config, args.batches)
      rows.append(row)
      print(name, row, flush=True)
  load_after = os.getloadavg()

  shared = (f"shared with other jobs (load average {load_before[0]:.1f} at the start, "
            f"{load_after[0]:.1f} at the end), so wall-clock numbers (the worker columns) "
            f"are pessimistic" if args.shared == "yes" else
            "not shared with other jobs (wall-clock worker columns included)")
  lines = [
      "# Input pipeline benchmark",
      "",
      f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(t_start))}. Machine: "
      f"{os.cpu_count()} CPU cores ({platform.machine()}), Python "
      f"{platform.python_version()}, Pillow {Image.__version__}, simplejpeg "
      f"{simplejpeg.__version__}, OpenCV {cv2.__version__}; **the machine was {shared}**. "
      f"Images: "
      f"{args.images} {args.size}x{args.size} JPEGs (quality 90, mean "
      f"{corpus['mean_kb']:.0f} KB) cut from real photos ({', '.join(corpus['photos'])}) "
      f"with random crops, flips and colour jitter. Work per image: read the record, decode, "
      f"random resized crop to {args.crop}x{args.crop} (antialiased bilinear), float32 CLIP "
      f"normalisation, byte-tokenise the caption. Command: "
      f"`PYTHONPATH=. python tools/bench_input.py`.",
      "",
      "Baseline: PIL decode at full size, then the same kind of crop + PIL antialiased "
      "bilinear resize, then the same CLIP normalisation (`transforms.finalize`), on the "
      "same bytes held in memory: "
      + ", ".join(f"**{v:.0f} images/s/core** with crop scale {k}" for k, v in base.items())
      + ".",
      "",
      "Same output: the fast path's crops against the baseline's (PIL full decode + "
      "antialiased bilinear) on the same boxes, mean PSNR "
      + ", ".join(f"**{v:.1f} dB** with crop scale {k}" for k, v in psnr.items())
      + ".",
      "",
      "| format | per core, crop scale " + " | per core, crop scale ".join(scales) + " | "
      + " | ".join(f"{w} worker{'s' if w > 1 else ''}: images/s (per worker) | "
                   f"{w} worker{'s' if w > 1 else ''}: first batch of {args.batch} ready (s)"
                   for w in workers) + " |",
      "|---|" + "---:|" * len(scales) + "---:|---:|" * len(workers),
  ]
  for row in rows:
    cells = [row["format"]]
    cells += [f"{row[k]:.0f} ({row[k] / base[k]:.1f}x baseline)" for k in scales]
    for w in workers:
      t_first, rate = row[w]
      cells += [f"{rate:.0f} ({rate / w:.0f})", f"{t_first:.1f}"]
    lines.append("| " + " | ".join(cells) + " |")
  lines += [
      "",
      "Per core: images per CPU-second (process CPU time; baseline and formats take turns "
      "in chunks of 16 images so that load changes hit all alike) of one thread reading "
      "record i from the source "
      "(tar member by offset, ArrayRecord record, or the file named in the manifest) and "
      "running the pipeline's `Preprocess`: crop box from the header, JPEG decoded by "
      "libjpeg-turbo at 1/2, 1/4 or 1/8 scale when the box stays >= 224 pixels a side, "
      "OpenCV resize with a Gaussian pre-blur matching PIL's antialiasing, one in-place "
      "multiply-add to normalise (the baseline uses the same normalisation code, so the "
      "ratio is decode + crop + resize). The default crop scale (0.8-1) is "
      "`data.crop_scale`'s default and close to open_clip's (0.9-1); with Inception-style "
      "crops (0.08-1) most boxes are under 2 x 224 pixels wide and decode at full size, "
      "and the gain comes from the resize alone. "
      f"Workers: `pipeline.train_dataset` with `data.num_workers` worker processes (grain "
      f"`mp_prefetch`), `data.read_threads=1`, crop scale 0.8-1, {args.pipeline_dtype} "
      f"output (the training default; the tower normalises on device), batches of "
      f"{args.batch}; images/s is wall-clock over {args.batches} batches after the first; "
      "the first-batch time counts from creating the iterator (worker start-up and the "
      "source index included). The main process (batching) shares the same cores, so with "
      "as many workers as cores the per-worker rate drops.",
  ]
  if args.large == "yes":
    lines += large_image_tables(args.crop, args.large_repeats)
  table = "\n".join(lines) + "\n"
  print(table)
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, "w") as f:
    f.write(table)


if __name__ == "__main__":
  main()
