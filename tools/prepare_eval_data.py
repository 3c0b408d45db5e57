"""Manifests for standard evaluation sets from files already on disk (no downloads):
what `eval.tasks.<name>.data` then reads with `eval_source="manifest"`.

    # a classification set in class folders (ImageNet val, Food-101, ... in ImageFolder
    # layout ROOT/<class>/<image>); labels are the folders in sorted order
    python tools/prepare_eval_data.py folder /data/imagenet/val --out /data/imagenet_val.jsonl \\
        --names imagenet
    # COCO / Flickr30k captions: Karpathy's split file (dataset_coco.json,
    # dataset_flickr30k.json) or COCO's captions_val2017.json; several captions per image
    python tools/prepare_eval_data.py captions /data/coco/dataset_coco.json \\
        --images /data/coco --split test --out /data/coco_5k.jsonl

`folder` writes one row per image, {"image": path relative to the manifest, "caption": the
class name, "label": its index}, and a class-names file beside the manifest
(<out>.classnames.txt, one a line in label order) for a zero-shot task's `classnames`.
`--names FILE` (one name a line, in sorted folder order) or `--names DATASET` (xmodal's
built-in prompts: "imagenet" for WordNet-id folders, "cifar10", ...) gives readable names
to folders named by ids. `captions` writes {"image": path, "caption": [captions...]}, the
rows a retrieval task with `captions="all"` scores COCO-style.
"""

import argparse
import collections
import json
import os
import sys

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


def _relative(path: str, out: str) -> str:
  return os.path.relpath(os.path.abspath(path), os.path.dirname(os.path.abspath(out)))


def _write(rows, out: str) -> None:
  tmp = out + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    for row in rows:
      f.write(json.dumps(row, ensure_ascii=False) + "\n")
  os.replace(tmp, out)


def folder(root: str, out: str, names: str | None = None) -> dict:
  """ImageFolder layout -> manifest rows and a class-names file; returns counts."""
  classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
  if not classes:
    raise SystemExit(f"{root}: no class folders (expected ROOT/<class>/<image>)")
  readable = [c.replace("_", " ") for c in classes]
  if names:
    readable = list(_names(names))
    if len(readable) != len(classes):
      raise SystemExit(f"--names {names}: {len(readable)} names for {len(classes)} class "
                       f"folders in {root}")
  rows = []
  for label, (folder_name, name) in enumerate(zip(classes, readable)):
    name = name if isinstance(name, str) else name[0]      # synonyms: the first
    for dirpath, _, files in sorted(os.walk(os.path.join(root, folder_name))):
      for file in sorted(files):
        if file.lower().endswith(IMAGE_EXTENSIONS):
          rows.append({"image": _relative(os.path.join(dirpath, file), out), "caption": name,
                       "label": label})
  _write(rows, out)
  with open(out + ".classnames.txt", "w", encoding="utf-8") as f:
    f.write("\n".join(n if isinstance(n, str) else n[0] for n in readable) + "\n")
  return {"rows": len(rows), "classes": len(classes)}


def _names(spec: str):
  if os.path.isfile(spec):
    with open(spec, encoding="utf-8") as f:
      return [line.strip() for line in f if line.strip()]
  from xmodal.evaluate import prompts
  return prompts.dataset_prompts(spec)[0]


def captions(annotations: str, images: str, out: str, split: str = "test") -> dict:
  """Karpathy split JSON ({"images": [{"filepath", "filename", "split", "sentences"}]}) or
  COCO captions JSON ({"images": [{"id", "file_name"}], "annotations": [{"image_id",
  "caption"}]}) -> one manifest row per image with all of its captions."""
  with open(annotations, encoding="utf-8") as f:
    given = json.load(f)
  rows = []
  if "annotations" in given:                         # COCO's own captions file
    by_image = collections.defaultdict(list)
    for a in given["annotations"]:
      by_image[a["image_id"]].append(a["caption"].strip())
    for image in given["images"]:
      if by_image[image["id"]]:
        rows.append({"image": _relative(os.path.join(images, image["file_name"]), out),
                     "caption": by_image[image["id"]]})
  else:                                              # Karpathy's split file
    for image in given["images"]:
      if image.get("split") != split:
        continue
      path = os.path.join(images, image.get("filepath", ""), image["filename"])
      rows.append({"image": _relative(path, out),
                   "caption": [s["raw"].strip() for s in image["sentences"]]})
  if not rows:
    raise SystemExit(f"{annotations}: no images (split {split!r})")
  _write(rows, out)
  return {"rows": len(rows), "captions": sum(len(r["caption"]) for r in rows)}


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  sub = ap.add_subparsers(dest="what", required=True)
  f = sub.add_parser("folder", help="class folders -> manifest + class names")
  f.add_argument("root")
  f.add_argument("--out", required=True)
  f.add_argument("--names", help="a file of names or a built-in dataset ('imagenet', ...)")
  c = sub.add_parser("captions", help="COCO / Flickr30k captions -> multi-caption manifest")
  c.add_argument("annotations")
  c.add_argument("--images", required=True, help="the folder the image paths are under")
  c.add_argument("--split", default="test", help="Karpathy split (default: %(default)s)")
  c.add_argument("--out", required=True)
  args = ap.parse_args(argv)
  if args.what == "folder":
    done = folder(args.root, args.out, args.names)
  else:
    done = captions(args.annotations, args.images, args.out, args.split)
  print(f"wrote {args.out}: {done}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
