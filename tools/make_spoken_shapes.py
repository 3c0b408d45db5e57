"""Spoken captions for the embedded shapes dataset: a real-speech record set made offline.

Each record is a shapes image (PNG), its caption ("a small red circle at the top left.")
and that caption spoken by espeak-ng (WAV, 22,050 Hz) in one of several English voices at
a random speed and pitch, so the audio tower must recognise words, not a fixed waveform:

    apt-get install espeak-ng          # Debian/Ubuntu; no network needed afterwards
    python tools/make_spoken_shapes.py --out data/spoken_shapes [--train 3000 --eval 300]

writes OUT/{img,wav}/NNNNNN.{png,wav} and OUT/train.jsonl, OUT/eval.jsonl with rows
{"image", "audio", "caption", "label"} (label: the 30 "colour shape" classes). The eval
split walks distinct attribute combinations (distinct captions), as the shapes eval does.
Train on it with configs/spoken_audio_text.py (audio-text) or configs/spoken_three.py
(image + audio + text).
"""

import argparse
import concurrent.futures
import json
import os
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from xmodal.data import shapes  # noqa: E402

VOICES = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan",
          "en-us+f3", "en-gb+f2", "en-us+m3")


def speak(text: str, path: str, rng: np.random.Generator) -> None:
  voice = VOICES[int(rng.integers(len(VOICES)))]
  speed, pitch = int(rng.integers(130, 191)), int(rng.integers(30, 71))
  subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", path,
                  text], check=True, capture_output=True)


def make_split(out: str, split: str, start: int, n: int, image_size: int) -> None:
  source = shapes.ShapesSource(split, n, image_size)
  rows = []

  def one(i):
    rec = source[i]
    k = start + i
    Image.fromarray(rec["image"]).save(os.path.join(out, "img", f"{k:06d}.png"))
    speak(rec["caption"], os.path.join(out, "wav", f"{k:06d}.wav"),
          np.random.default_rng((7, k)))
    return {"image": f"img/{k:06d}.png", "audio": f"wav/{k:06d}.wav",
            "caption": rec["caption"], "label": int(rec["label"])}

  with concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 2) as pool:
    rows = list(pool.map(one, range(n)))
  with open(os.path.join(out, f"{split}.jsonl"), "w") as f:
    f.write("\n".join(json.dumps(r) for r in rows) + "\n")


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--out", required=True)
  parser.add_argument("--train", type=int, default=3000)
  parser.add_argument("--eval", type=int, default=300)
  parser.add_argument("--image_size", type=int, default=64)
  args = parser.parse_args(argv)
  if shutil.which("espeak-ng") is None:
    raise SystemExit("espeak-ng not found: install it (Debian/Ubuntu: apt-get install espeak-ng)")
  for sub in ("img", "wav"):
    os.makedirs(os.path.join(args.out, sub), exist_ok=True)
  make_split(args.out, "train", 0, args.train, args.image_size)
  make_split(args.out, "eval", args.train, args.eval, args.image_size)
  print(f"wrote {args.train} train and {args.eval} eval records to {args.out}")


if __name__ == "__main__":
  main()
