"""Decode and augmentation: the reduced-scale JPEG crop matches a full decode, flips,
eval center crop, float / CLIP-normalised output."""

import io

import numpy as np
from PIL import Image

from xmodal.data import transforms


def _photo(size=(512, 384), seed=0) -> bytes:
  rng = np.random.default_rng(seed)
  img = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize(
      size, Image.BICUBIC)
  buf = io.BytesIO()
  img.save(buf, "JPEG", quality=95)
  return buf.getvalue()


def test_reduced_decode_is_used_and_matches_a_full_decode():
  data = _photo()
  img, factor = transforms._reduced(transforms.open_image(data), 480, 380, 160)
  assert factor == 2 and img.size == (256, 192)            # 1/2 keeps the box >= 160
  img, factor = transforms._reduced(transforms.open_image(data), 200, 200, 160)
  assert factor == 1                                      # 1/2 would leave 100 < 160
  for seed in range(5):
    fast = transforms.decode_random_crop(data, 112, np.random.default_rng(seed), (0.5, 1.0))
    slow = transforms.decode_random_crop(data, 112, np.random.default_rng(seed), (0.5, 1.0),
                                         full_decode=True)
    assert fast.shape == slow.shape == (112, 112, 3) and fast.dtype == np.uint8
    assert np.abs(fast.astype(float) - slow).mean() < 4.0  # same crop, same content


def test_flip_and_crop_are_seeded():
  data = _photo(seed=1)
  a = transforms.decode_random_crop(data, 64, np.random.default_rng(3), flip=True)
  b = transforms.decode_random_crop(data, 64, np.random.default_rng(3), flip=True)
  np.testing.assert_array_equal(a, b)
  flipped = 0
  for seed in range(20):
    plain = transforms.decode_random_crop(data, 64, np.random.default_rng(seed))
    maybe = transforms.decode_random_crop(data, 64, np.random.default_rng(seed), flip=True)
    if not np.array_equal(plain, maybe):
      np.testing.assert_array_equal(maybe, plain[:, ::-1])
      flipped += 1
  assert 3 <= flipped <= 17


def test_eval_center_crop_and_png():
  data = _photo((300, 200))
  out = transforms.decode_center_crop(data, 64)
  full = transforms.resize_center_crop(Image.open(io.BytesIO(data)).convert("RGB"), 64)
  assert out.shape == (64, 64, 3)
  assert np.abs(out.astype(float) - full).mean() < 4.0
  buf = io.BytesIO()
  Image.open(io.BytesIO(data)).convert("L").save(buf, "PNG")   # grayscale PNG -> RGB
  assert transforms.decode_random_crop(buf.getvalue(), 32, np.random.default_rng(0)).shape == (
      32, 32, 3)


def test_finalize():
  pixels = np.full((2, 2, 3), 255, np.uint8)
  assert transforms.finalize(pixels) is pixels
  np.testing.assert_array_equal(transforms.finalize(pixels, "float32"), 255.0)
  clip = transforms.finalize(pixels, "float32", "clip")
  np.testing.assert_allclose(clip[0, 0], (1 - transforms.CLIP_MEAN) / transforms.CLIP_STD,
                             rtol=1e-6)
