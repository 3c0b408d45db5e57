"""Every evaluation kind against an independent computation on data the test makes (numpy
brute force, scikit-learn, the closed form), and the task checks that name the field.

The model is a tiny randomly initialised one: the references take its embeddings by
another path (the pipeline's eval_arrays, the manifest read by hand, the tokenizer), so
what is compared is the kind's reading, pairing and scoring."""

import json
import sys

import jax
import ml_collections
import numpy as np
import pytest

from xmodal import config as config_lib, embed, parallel
from xmodal.data import pipeline, shapes, tokenizer as tokenizer_lib
from xmodal.evaluate import context as context_lib, fewshot, geometry, harness, kinds, ranking
from xmodal.evaluate import zeroshot
from xmodal.fields import Field
from xmodal.models import model as model_lib
from tiny import make_tiny_config


def _model(config):
  model = model_lib.MultiTower(config)
  params = model_lib.unbox(jax.jit(model.init)(jax.random.key(1),
                                               model_lib.dummy_inputs(config))["params"])
  mesh = parallel.make_mesh(config)
  return model, params, embed.Embedder(model, mesh, config.eval.batch_size)


@pytest.fixture(scope="module")
def image_text():
  """A tiny image/text model on `shapes`: 64 held-out rows, a 300-row training split."""
  config = make_tiny_config(**{"data.shapes_eval_size": 64, "data.shapes_train_size": 300})
  model, params, embedder = _model(config)
  return config, params, embedder


def _run(config, params, embedder, kind, **values):
  task = kinds.new(kind, **values)
  with config.unlocked():
    config.eval.tasks = ml_collections.ConfigDict({"t": task})
  kinds.check(config)
  ctx = context_lib.Context(config, embedder, params)
  return harness.run_task(ctx, "t", task), ctx


def _eval_embeddings(config, params, embedder, split="eval"):
  data = pipeline.eval_arrays(config, split=split)
  return {m: embedder(params, m, data[m]) for m in config.towers}, data["label"]


# ----------------------------------------------------------------------------- registry

def test_registry_is_the_modules_and_each_kind_declares_ranged_fields():
  assert kinds.names() == ("fewshot", "geometry", "joint", "knn", "linear_probe",
                           "retrieval", "zeroshot")
  for kind in kinds.names():
    module = kinds.get(kind)
    assert callable(module.run) and set(kinds.splits(kind)) <= {"train", "eval"}
    for name, field in kinds.fields(kind).items():
      assert isinstance(field, Field), (kind, name)
      number = isinstance(field.default, (int, float)) and not isinstance(field.default, bool)
      assert not number or field.range_text(), (kind, name)   # every number bounded


def _config_with(**tasks):
  config = make_tiny_config()
  with config.unlocked():
    config.eval.tasks = ml_collections.ConfigDict(tasks)
  return config


@pytest.mark.parametrize("task, message", [
    (dict(kind="zeroshott"), "config.eval.tasks.t.kind: unknown evaluation kind 'zeroshott'; "
                             "known: fewshot, geometry"),
    (dict(kind="zeroshott"), "did you mean 'zeroshot'?"),
    (dict(kind="knn", temperatur=0.1), "config.eval.tasks.t.temperatur: unknown key; did you "
                                       "mean config.eval.tasks.t.temperature?"),
    (dict(kind="retrieval", captions="some"), "config.eval.tasks.t.captions: 'some' is not one "
                                              "of ('first', 'all')"),
    (dict(kind="knn", k=0), "config.eval.tasks.t.k: must be > 0, got 0"),
    (dict(kind="fewshot", shots=(1, -5)), "config.eval.tasks.t.shots: must be > 0"),
    (dict(kind="retrieval", every=-1), "config.eval.tasks.t.every: must be >= 0"),
    (dict(kind="retrieval", data=dict(eval_filez="x")), "config.eval.tasks.t.data.eval_filez: "
                                                        "unknown key; did you mean "
                                                        "config.eval.tasks.t.data.eval_files?"),
    (dict(kind="retrieval", data=dict(eval_source="manifest", eval_files="/no/such.jsonl")),
     "config.eval.tasks.t.data.eval_files: no file matches '/no/such.jsonl'"),
    (dict(kind="retrieval", pairs=("image:audio",)), "config.eval.tasks.t.pairs: 'image:audio' "
                                                     "must be 'a:b'"),
    (dict(kind="zeroshot", templates="a photo"), "config.eval.tasks.t.templates: 'a photo' is "
                                                 "neither a template set"),
    (dict(kind="zeroshot", classnames="/no/names.txt"), "config.eval.tasks.t.classnames: no "
                                                        "such file"),
    (dict(kind="zeroshot", prompts="cifar11"), "config.eval.tasks.t.prompts: 'cifar11' is not "
                                               "one of"),
    (dict(kind="zeroshot", image="text"), "config.eval.tasks.t.image: 'text' is not a 'vit' "
                                          "tower"),
    (dict(kind="linear_probe", tower="audio"), "config.eval.tasks.t.tower: no tower 'audio'"),
    (dict(kind="retrieval", data=dict(image_size=64)), "config.eval.tasks.t.data.image_size: "
                                                       "defines the model's input"),
    (dict(kind="mypkg_missing.evaluator"), "config.eval.tasks.t.kind: cannot import evaluator "
                                           "module 'mypkg_missing.evaluator'"),
])
def test_a_bad_task_is_one_error_naming_its_field(task, message):
  config = _config_with(t=ml_collections.ConfigDict(task))
  with pytest.raises(config_lib.ConfigError) as err:
    config_lib.validate(config, 8)
  assert message in str(err.value), str(err.value)
  assert str(err.value).startswith("config.eval.tasks.t."), str(err.value)


def test_a_probe_needs_the_training_split_of_its_data(tmp_path):
  (tmp_path / "test.jsonl").write_text('{"image": "a.png", "caption": "x", "label": 0}\n')
  data = dict(eval_source="manifest", eval_files=str(tmp_path / "test.jsonl"))
  config_lib.validate(_config_with(t=ml_collections.ConfigDict(
      dict(kind="retrieval", data=data))), 8)        # retrieval reads the test split only
  with pytest.raises(config_lib.ConfigError,
                     match=r"^config.eval.tasks.t.data.train_files: required when the train "
                           r"data is 'manifest'"):
    config_lib.validate(_config_with(t=ml_collections.ConfigDict(
        dict(kind="linear_probe", data=data))), 8)


def test_task_names_must_survive_tensorboard():
  for bad in ("my task", "eval"):
    config = _config_with(**{bad: ml_collections.ConfigDict(dict(kind="retrieval"))})
    with pytest.raises(config_lib.ConfigError, match=f"^config.eval.tasks.{bad}: a task name"):
      config_lib.validate(config, 8)


def test_a_kind_from_outside_the_package_by_module_path(tmp_path, monkeypatch, image_text):
  (tmp_path / "my_eval.py").write_text(
      "from xmodal.fields import Field\n"
      "FIELDS = dict(scale=Field(2.0, 'multiplies the mean norm', gt=0))\n"
      "def run(context, task):\n"
      "  rows = context.embedded(task, 'eval', ('image',))\n"
      "  import numpy as np\n"
      "  return {'norm': task.scale * float(np.linalg.norm(rows.z['image'], axis=1).mean())}\n")
  (tmp_path / "not_eval.py").write_text("x = 1\n")
  monkeypatch.syspath_prepend(str(tmp_path))
  config, params, embedder = image_text
  out, _ = _run(config, params, embedder, "my_eval", scale=3.0)
  assert out == {"norm": pytest.approx(3.0, rel=1e-5)}       # unit vectors
  with pytest.raises(ValueError, match="module 'not_eval' is not an evaluator: it defines no "
                                       "FIELDS or run"):
    kinds.get("not_eval")
  sys.modules.pop("my_eval", None)


# ----------------------------------------------------------------------------- kinds

def test_zeroshot_equals_numpy_argmax_over_prompt_means(image_text):
  config, params, embedder = image_text
  out, _ = _run(config, params, embedder, "zeroshot", templates="openai_imagenet_7")
  z, labels = _eval_embeddings(config, params, embedder)
  from xmodal.evaluate import prompts
  tok = tokenizer_lib.get_tokenizer(config)
  classes = []
  for name in shapes.CLASSNAMES:
    t = embedder(params, "text", tok.encode_batch([p.format(name) for p in
                                                   prompts.TEMPLATES["openai_imagenet_7"]]))
    mean = t.mean(axis=0)
    classes.append(mean / np.linalg.norm(mean))
  scores = z["image"] @ np.stack(classes).T
  assert out["top1"] == pytest.approx(np.mean(np.argmax(scores, 1) == labels), abs=1e-12)
  top5 = np.argsort(-scores, axis=1)[:, :5]
  assert out["top5"] == pytest.approx(np.mean(np.any(top5 == labels[:, None], 1)), abs=1e-12)
  assert out["chance"] == 1 / 30 and out["examples"] == 64


def test_zeroshot_with_synonyms_averages_every_name(image_text):
  """A class given as several names (CLIP's fer2013) averages the prompts of all of them."""
  config, params, embedder = image_text

  class Ctx:
    def embed_texts(self, modality, texts):
      return embedder(params, modality, tokenizer_lib.get_tokenizer(config).encode_batch(texts))
  ctx = Ctx()
  single = zeroshot.class_embeddings(lambda p: ctx.embed_texts("text", p), ["red", "blue"],
                                     ["a {}.", "the {}"])
  from xmodal.evaluate.kinds import zeroshot as kind
  np.testing.assert_allclose(kind.class_embeddings(ctx, "text", ["red", "blue"],
                                                   ["a {}.", "the {}"]), single, atol=1e-6)
  both = kind.class_embeddings(ctx, "text", [("red", "crimson"), "blue"], ["a {}."])
  z = ctx.embed_texts("text", ["a red.", "a crimson."]).mean(0)
  np.testing.assert_allclose(both[0], z / np.linalg.norm(z), atol=1e-6)


def _multi_caption_manifest(tmp_path, n=24):
  from PIL import Image
  colours = list(shapes.COLOURS)
  rows = []
  for i in range(n):
    shape, colour = shapes.SHAPES[i % 5], colours[i % 6]
    Image.fromarray(shapes.render(shape, colour, "large", i % 3, 1, 16,
                                  np.random.default_rng(i))).save(tmp_path / f"{i}.png")
    captions = [f"a {colour} {shape}", f"{shape} in {colour}", f"the {colour} one", "a shape"]
    rows.append({"image": f"{i}.png", "caption": captions[:1 + i % 4]})
  path = tmp_path / "coco.jsonl"
  path.write_text("\n".join(json.dumps(r) for r in rows))
  return path, rows


def test_retrieval_with_several_captions_equals_dense_ranks_on_8_devices(image_text, tmp_path):
  """COCO-style: 1-4 captions per image (one shared by many images, so ties), the gallery
  split over 8 devices; ranks equal the dense numpy ranks of embeddings made by hand."""
  config, params, embedder = image_text
  path, rows = _multi_caption_manifest(tmp_path)
  data = dict(eval_source="manifest", eval_files=str(path))
  out, ctx = _run(config, params, embedder, "retrieval", captions="all", query_block=7,
                  data=data)
  assert ctx.mesh.size == 8
  task_config = ml_collections.ConfigDict(config.to_dict())
  task_config.data.update(data)
  images = embedder(params, "image", pipeline.eval_arrays(task_config)["image"])
  tok = tokenizer_lib.get_tokenizer(config)
  captions = [c for r in rows for c in r["caption"]]
  owner = np.repeat(np.arange(len(rows)), [len(r["caption"]) for r in rows])
  texts = embedder(params, "text", tok.encode_batch(captions))
  i2t = ranking.dense_ranks(images, texts, ranking.positives_from_groups(np.arange(len(rows)),
                                                                         owner))
  t2i = ranking.dense_ranks(texts, images, owner[:, None])
  for direction, rank in (("image_to_text", i2t), ("text_to_image", t2i)):
    for k in (1, 5, 10):
      assert out[f"{direction}/R{k}"] == np.mean(rank < k), (direction, k)
    assert out[f"{direction}/mean_rank"] == pytest.approx(np.mean(rank + 1))
    assert out[f"{direction}/median_rank"] == np.median(rank + 1)
  assert out["examples"] == 24 and len(t2i) == 60


def test_retrieval_first_caption_equals_the_old_dense_recall(image_text):
  """One caption per row: the sharded ranks give the numbers of the dense formula the
  evaluation used before (ties against the query)."""
  config, params, embedder = image_text
  out, _ = _run(config, params, embedder, "retrieval")
  z, _ = _eval_embeddings(config, params, embedder)
  for q, g in (("image", "text"), ("text", "image")):
    s = z[q] @ z[g].T
    true = np.diag(s)
    rank = (s > true[:, None]).sum(1) + (s == true[:, None]).sum(1) - 1
    for k in (1, 5, 10):
      assert out[f"{q}_to_{g}/R{k}"] == np.mean(rank < k)


def test_linear_probe_equals_sklearn_within_one_percent(image_text):
  sklearn_linear = pytest.importorskip("sklearn.linear_model")
  config, params, embedder = image_text
  out, _ = _run(config, params, embedder, "linear_probe", l2=(1e-3,), val_fraction=0.2)
  train, train_y = _eval_embeddings(config, params, embedder, "train")
  test, test_y = _eval_embeddings(config, params, embedder)
  ref = sklearn_linear.LogisticRegression(C=1.0 / (1e-3 * len(train_y)), max_iter=5000,
                                          tol=1e-8).fit(train["image"], train_y)
  assert out["l2"] == 1e-3 and out["train_examples"] == 300
  assert abs(out["top1"] - ref.score(test["image"], test_y)) <= 0.01, out


def test_fewshot_equals_the_closed_form(image_text):
  config, params, embedder = image_text
  out, _ = _run(config, params, embedder, "fewshot", shots=(1, 5), l2=(0.5,), seed=3)
  train, train_y = _eval_embeddings(config, params, embedder, "train")
  test, test_y = _eval_embeddings(config, params, embedder)
  classes = 30
  for k in (1, 5):
    idx = fewshot.draw_shots(train_y, k, classes, 3 + k)
    x = train["image"][idx].astype(np.float64)
    mean = x.mean(0)
    t = 2 * np.eye(classes)[train_y[idx]] - 1
    w = np.linalg.solve((x - mean).T @ (x - mean) + 0.5 * np.eye(x.shape[1]), (x - mean).T @ t)
    pred = np.argmax((test["image"] - mean) @ w + t.mean(0), axis=1)
    assert out[f"{k}shot/top1"] == pytest.approx(np.mean(pred == test_y), abs=1e-12)


def test_knn_classification_equals_brute_force(image_text):
  config, params, embedder = image_text
  out, _ = _run(config, params, embedder, "knn", k=7, temperature=0.1)
  train, train_y = _eval_embeddings(config, params, embedder, "train")
  test, test_y = _eval_embeddings(config, params, embedder)
  hits = 0
  for q, y in zip(test["image"], test_y):
    s = train["image"] @ q
    votes = np.zeros(30)
    for j in np.argsort(-s, kind="stable")[:7]:
      votes[train_y[j]] += np.exp(s[j] / 0.1)
    hits += np.argmax(votes) == y
  assert out["top1"] == pytest.approx(hits / len(test_y), abs=1e-12)


def test_geometry_equals_its_definitions_on_the_embeddings(image_text):
  config, params, embedder = image_text
  out, _ = _run(config, params, embedder, "geometry")
  z, _ = _eval_embeddings(config, params, embedder)
  a, b = z["image"].astype(np.float64), z["text"].astype(np.float64)
  assert out["image-text/gap"] == pytest.approx(np.linalg.norm(a.mean(0) - b.mean(0)), 1e-6)
  assert out["image-text/alignment"] == pytest.approx(np.mean(np.sum((a - b) ** 2, 1)), 1e-5)
  d2 = np.sum((a[:, None] - a[None]) ** 2, -1)[~np.eye(len(a), dtype=bool)]
  assert out["image/uniformity"] == pytest.approx(np.log(np.mean(np.exp(-2 * d2))), 1e-5)
  assert out["text/effective_rank"] == pytest.approx(geometry.effective_rank(b), 1e-6)


@pytest.fixture(scope="module")
def vectors(tmp_path_factory):
  """Two vector towers on cached features with a 5-dim 'expression' target per row."""
  folder = tmp_path_factory.mktemp("features")
  rng = np.random.default_rng(0)
  mix = rng.normal(size=(12, 5))
  for split, n in (("train", 200), ("test", 50)):
    a = rng.normal(size=(n, 12)).astype(np.float32)
    np.savez(folder / f"{split}.npz", a=a, b=(a + 0.3 * rng.normal(size=a.shape)).astype(
        np.float32), expression=(np.tanh(a @ mix)).astype(np.float32),
        label=rng.integers(0, 3, n).astype(np.int32))
  config = make_tiny_config(**{"data.source": "features",
                               "data.train_files": str(folder / "train.npz"),
                               "data.eval_files": str(folder / "test.npz")})
  with config.unlocked():
    from xmodal import default_config
    vec = default_config.tower_defaults("vector")
    vec.features, vec.width, vec.depth = 12, 32, 1
    config.towers = ml_collections.ConfigDict({"a": vec, "b": ml_collections.ConfigDict(
        vec.to_dict())})
  config_lib.validate(config, 8)
  model, params, embedder = _model(config)
  return config, params, embedder


def test_knn_regression_equals_sklearn_neighbours_and_pearson(vectors):
  neighbors = pytest.importorskip("sklearn.neighbors")
  config, params, embedder = vectors
  out, _ = _run(config, params, embedder, "knn", target="expression", k=5, tower="b")
  train = pipeline.eval_arrays(config, split="train")
  test = pipeline.eval_arrays(config)
  ref_z, test_z = embedder(params, "b", train["b"]), embedder(params, "b", test["b"])
  pred = neighbors.KNeighborsRegressor(5, algorithm="brute", metric="cosine").fit(
      ref_z, train["expression"]).predict(test_z)
  r = [np.corrcoef(pred[:, j], test["expression"][:, j])[0, 1] for j in range(5)]
  assert out["pearson"] == pytest.approx(np.mean(r), abs=1e-5)
  assert out["mse"] == pytest.approx(np.mean((pred - test["expression"]) ** 2), rel=1e-5)
  assert out["examples"] == 50


def test_a_missing_target_field_is_an_error_naming_the_task(vectors):
  config, params, embedder = vectors
  with pytest.raises(kinds.TaskError, match=r"^config.eval.tasks.t: no usable rows in the "
                                            r"train split .* \(200 skipped\)"):
    _run(config, params, embedder, "knn", target="genes")


def test_a_local_tfds_classification_build_feeds_zeroshot_and_a_probe(image_text, tmp_path):
  """A tfds ArrayRecord build with images and labels but no captions (CIFAR-style): the
  zero-shot task takes its class names from the build's ClassLabel, the probe fits on its
  train split; the prompt scores equal numpy's on embeddings made by hand."""
  tfds = pytest.importorskip("tensorflow_datasets")
  colours = ["red", "green", "blue"]

  class TinyClasses(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
          "image": tfds.features.Image(encoding_format="png"),
          "label": tfds.features.ClassLabel(names=[f"{c}_circle" for c in colours])}))

    def _split_generators(self, dl_manager):
      return {"train": self._generate_examples(0, 30),
              "test": self._generate_examples(100, 12)}

    def _generate_examples(self, start, n):
      from PIL import Image
      for i in range(start, start + n):
        path = str(tmp_path / f"{i}.png")       # tfds encodes files, not arrays, without TF
        Image.fromarray(shapes.render("circle", colours[i % 3], "large", 1, 1, 16,
                                      np.random.default_rng(i))).save(path)
        yield i, {"image": path, "label": i % 3}

  data_dir = str(tmp_path / "tfds")
  TinyClasses(data_dir=data_dir, file_format="array_record").download_and_prepare()
  config, params, embedder = image_text
  data = dict(eval_source="tfds", tfds_name="tiny_classes", tfds_data_dir=data_dir,
              tfds_eval_split="test", tfds_train_split="train",
              tfds_keys="image=image,caption=,label=label")
  zs, _ = _run(config, params, embedder, "zeroshot", templates="openai_imagenet_7",
               data=data)
  probe, _ = _run(config, params, embedder, "linear_probe", l2=(1e-2,), data=data)
  assert zs["chance"] == 1 / 3 and zs["examples"] == 12 and probe["train_examples"] == 30
  task_config = ml_collections.ConfigDict(config.to_dict())
  task_config.data.update(data)
  from xmodal.evaluate import data as data_lib, prompts
  assert data_lib.label_names(task_config) == ("red circle", "green circle", "blue circle")
  z = embedder(params, "image", np.stack([shapes.render("circle", colours[i % 3], "large", 1,
                                                        1, 16, np.random.default_rng(i))
                                          for i in range(100, 112)]))
  tok = tokenizer_lib.get_tokenizer(config)
  classes = []
  for name in data_lib.label_names(task_config):
    t = embedder(params, "text", tok.encode_batch(
        [p.format(name) for p in prompts.TEMPLATES["openai_imagenet_7"]])).mean(0)
    classes.append(t / np.linalg.norm(t))
  pred = np.argmax(z @ np.stack(classes).T, axis=1)
  assert zs["top1"] == pytest.approx(np.mean(pred == np.arange(100, 112) % 3), abs=1e-12)
