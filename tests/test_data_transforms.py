"""Decode and augmentation: the reduced-scale JPEG crop matches a full decode, flips,
eval center crop, float / CLIP-normalised output."""

import io

import cv2
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


def _psnr(a, b) -> float:
  mse = np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2)
  return 10 * np.log10(255.0 ** 2 / mse)


def _texture(rng, size=(400, 300), cell=2) -> np.ndarray:
  """Fine random texture: detail near the frequencies a 2x+ downscale must filter out."""
  small = rng.integers(0, 256, (size[1] // cell, size[0] // cell, 3), dtype=np.uint8)
  return np.asarray(Image.fromarray(small).resize(size, Image.BICUBIC))


def test_resize_matches_pil_antialiased_bilinear():
  """`resize` (Gaussian pre-blur + cv2 bilinear) against PIL's antialiased bilinear, on
  textures where plain bilinear aliases: close to PIL, and far better than no blur."""
  rng = np.random.default_rng(0)
  for cell in (2, 3):
    img = _texture(rng, cell=cell)
    for out in ((300, 225), (200, 150), (108, 81), (64, 48), (600, 450)):
      ref = np.asarray(Image.fromarray(img).resize(out, Image.BILINEAR))
      ours = transforms.resize(img, *out)
      assert ours.shape == ref.shape and ours.dtype == np.uint8
      assert _psnr(ours, ref) > 33.0, (cell, out, _psnr(ours, ref))
      if out[0] <= 200:                      # 2x or more: unfiltered bilinear aliases
        plain = cv2.resize(img, out, interpolation=cv2.INTER_LINEAR)
        assert _psnr(plain, ref) < 30.0 < _psnr(ours, ref) - 10


def test_reduced_decode_is_used_and_matches_a_full_pil_decode():
  data = _photo()                                          # 512 x 384
  assert transforms._decode_for_box(data, 512, 384, 480, 380, 160).shape == (192, 256, 3)
  assert transforms._decode_for_box(data, 512, 384, 200, 200, 160).shape == (384, 512, 3)
  buf = io.BytesIO()                        # 4-pixel texture: misalignment would show
  Image.fromarray(_texture(np.random.default_rng(1), (512, 384), 4)).save(buf, "JPEG",
                                                                           quality=95)
  data = buf.getvalue()
  reductions = set()
  for seed in range(6):
    fast = transforms.decode_random_crop(data, 112, np.random.default_rng(seed), (0.3, 1.0))
    # The same box, cut from PIL's full-size decode and resized by PIL.
    ref = transforms.reference_random_crop(data, 112, np.random.default_rng(seed), (0.3, 1.0))
    _, _, w, h = transforms.sample_crop(512, 384, np.random.default_rng(seed), (0.3, 1.0))
    reductions.add(transforms._reduction(w, h, 112))
    assert fast.shape == ref.shape == (112, 112, 3) and fast.dtype == np.uint8
    # 1/2-scale DCT decode vs PIL's filter: ~30-40 dB; one pixel off would be ~16 dB.
    assert _psnr(fast, ref) > 27.0, (seed, _psnr(fast, ref))
    assert _psnr(np.roll(ref, 1, axis=1), ref) < 20.0
  assert reductions == {1, 2}                              # both paths were checked


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
