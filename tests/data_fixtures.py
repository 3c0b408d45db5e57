"""Small on-disk corpora for the data tests: images, webdataset tars, ArrayRecord shards,
manifests and a tensorflow-datasets build, all written into a temporary folder."""

import io
import json
import os
import tarfile

import numpy as np
from PIL import Image

from xmodal import default_config
from xmodal.data import sources


def image_bytes(seed: int, size=(48, 40), fmt: str = "JPEG") -> bytes:
  """A smooth random colour image (compresses like a photo), encoded."""
  rng = np.random.default_rng(seed)
  small = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
  img = Image.fromarray(small).resize(size, Image.BILINEAR)
  buf = io.BytesIO()
  img.save(buf, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
  return buf.getvalue()


def add_member(tf: tarfile.TarFile, name: str, data: bytes):
  info = tarfile.TarInfo(name)
  info.size = len(data)
  tf.addfile(info, io.BytesIO(data))


def write_tar(path: str, samples: list[dict]):
  """samples: [{"key": str, ext: bytes, ...}] -> a webdataset tar."""
  with tarfile.open(path, "w") as tf:
    for s in samples:
      for ext, data in s.items():
        if ext != "key":
          add_member(tf, f"{s['key']}.{ext}", data)


def good_samples(start: int, n: int) -> list[dict]:
  fmts = [("jpg", "JPEG"), ("png", "PNG"), ("webp", "WEBP")]
  out = []
  for i in range(start, start + n):
    ext, fmt = fmts[i % 3] if i % 5 == 0 else fmts[0]
    out.append({"key": f"{i:06d}", ext: image_bytes(i, fmt=fmt),
                "txt": f"caption number {i}".encode(),
                "json": json.dumps({"label": i % 7}).encode()})
  return out


def write_arrayrecord(path: str, records: list[bytes]):
  from array_record.python import array_record_module
  writer = array_record_module.ArrayRecordWriter(path, "group_size:1")
  for r in records:
    writer.write(r)
  writer.close()


def records(start: int, n: int) -> list[bytes]:
  return [sources.encode_record(image_bytes(i), f"record {i}", label=i % 5, key=str(i))
          for i in range(start, start + n)]


def caption_index(text: str) -> int:
  """'caption number 12' / 'record 12' / 'row 12 ...' (str or bytes) -> 12."""
  text = text.decode() if isinstance(text, bytes) else text
  return int(text.split()[-1 if text.startswith(("caption", "record")) else 1])


def data_config(**data) -> "default_config.ConfigDict":
  """A small config: tiny towers, 16-pixel images, batch 8."""
  config = default_config.get_config()
  config.batch_size = 8
  config.data.image_size = 16
  config.data.context_length = 24
  config.data.read_threads = 1
  for k, v in data.items():
    config.data[k] = v
  return config


def write_tfds(data_dir: str, tmp: str, n_train: int = 12, n_eval: int = 4) -> str:
  """Builds a tiny ArrayRecord tfds dataset "xmodal_tiny_caps"; returns its name."""
  import tensorflow_datasets as tfds

  # Not registered: a second call in the same process would be refused, and readers find
  # the build from its own metadata under data_dir anyway.
  class XmodalTinyCaps(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
          "image": tfds.features.Image(encoding_format="jpeg"),
          "captions": tfds.features.Sequence({"text": tfds.features.Text()}),
          "label": tfds.features.ClassLabel(num_classes=3)}))

    def _split_generators(self, dl_manager):
      return {"train": self._generate_examples(0, n_train),
              "validation": self._generate_examples(1000, n_eval)}

    def _generate_examples(self, start, n):
      for i in range(start, start + n):
        path = os.path.join(tmp, f"tfds_{i}.jpg")
        with open(path, "wb") as f:
          f.write(image_bytes(i))
        yield i, {"image": path, "label": i % 3,
                  "captions": {"text": [f"row {i} first", f"row {i} second"]}}

  builder = XmodalTinyCaps(data_dir=data_dir, file_format="array_record")
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=tmp))
  return "xmodal_tiny_caps"
