"""`xmodal embed`: the embeddings of every row of a split, by any towers of a checkpoint,
written to sharded files, resumably.

    xmodal embed --workdir RUN --out DIR [--split train|eval] [--towers image,text]
                 [--format npy|parquet] [--shard_size 10000] [--step N]
                 [--config.data.train_files=/d/corpus.jsonl ...]

The rows are those of the split of the run's data (or of the data fields given, any source
the pipeline reads), prepared as evaluation prepares them (centre crop, first caption).
DIR holds

    embeddings.json        what was embedded: run, step, split, towers {name: dim}, rows,
                           shard_size, format and the config (what `xmodal filter` reopens)
    shard-00000.parquet    columns "index" (int64: the row in the source), "key" (the
                           record's key or image path), one list<float32>[D] per tower
    shard-00000.<tower>.npy float32 [n, D], shard-00000.index.npy int64 [n],
                           shard-00000.key.npy str [n] (--format npy: memory-mappable)

Shard s holds source rows [s x shard_size, (s + 1) x shard_size); rows the pipeline
cannot read are left out (their index is missing) and counted. Shard files appear whole
(written under a temporary name, then renamed), so a second run after an interruption
skips every shard already there. With several processes, process p writes shards s with
s % processes == p, embedding them on its own devices (a mesh of `jax.local_devices()`):
no collective between hosts, so hosts never wait for each other.
"""

import json
import logging
import os

import jax
import numpy as np

from xmodal import config as config_lib, embed, parallel
from xmodal.evaluate import data as data_lib

FORMATS = ("npy", "parquet")
META = "embeddings.json"


def shard_name(shard: int) -> str:
  return f"shard-{shard:05d}"


def _complete(out: str, shard: int, fmt: str) -> bool:
  last = ".parquet" if fmt == "parquet" else ".index.npy"    # the file renamed last
  return os.path.exists(os.path.join(out, shard_name(shard) + last))


def _write_npy(path: str, array) -> str:
  tmp = path + ".tmp"
  with open(tmp, "wb") as f:
    np.save(f, array)
  return tmp


def write_shard(out: str, shard: int, fmt: str, index, keys, z: dict) -> None:
  """One shard's rows: index int64 [n], keys [n] str, z {tower: float32 [n, D]}."""
  base = os.path.join(out, shard_name(shard))
  if fmt == "parquet":
    import pyarrow as pa  # noqa: PLC0415
    import pyarrow.parquet as pq  # noqa: PLC0415
    columns = {"index": pa.array(np.asarray(index, np.int64)),
               "key": pa.array(list(keys), pa.string())}
    for name, v in z.items():
      v = np.asarray(v, np.float32)
      columns[name] = pa.FixedSizeListArray.from_arrays(pa.array(v.reshape(-1)), v.shape[1])
    tmp = base + ".parquet.tmp"
    pq.write_table(pa.table(columns), tmp)
    os.replace(tmp, base + ".parquet")
    return
  moves = [(_write_npy(f"{base}.{name}.npy", np.asarray(v, np.float32)), f"{base}.{name}.npy")
           for name, v in z.items()]
  moves.append((_write_npy(f"{base}.key.npy", np.asarray(list(keys), dtype=str)),
                f"{base}.key.npy"))
  moves.append((_write_npy(f"{base}.index.npy", np.asarray(index, np.int64)),
                f"{base}.index.npy"))
  for tmp, final in moves:                    # the index last: it marks the shard done
    os.replace(tmp, final)


def read_shard(out: str, shard: int, fmt: str, towers) -> dict:
  base = os.path.join(out, shard_name(shard))
  if fmt == "parquet":
    import pyarrow.parquet as pq  # noqa: PLC0415
    table = pq.read_table(base + ".parquet")
    rows = {"index": table["index"].to_numpy(), "key": table["key"].to_pylist()}
    for name in towers:
      column = table[name].combine_chunks()
      rows[name] = column.flatten().to_numpy().reshape(len(column), -1).astype(np.float32)
    return rows
  rows = {"index": np.load(base + ".index.npy"), "key": np.load(base + ".key.npy").tolist()}
  for name in towers:
    rows[name] = np.load(f"{base}.{name}.npy")
  return rows


def read(out: str) -> tuple[dict, dict]:
  """(the embeddings.json of DIR, every shard's rows concatenated in row order: {"index"
  [N], "key" [N], tower: [N, D]}); an error naming the shard if one is missing."""
  meta = read_meta(out)
  if meta is None:
    raise FileNotFoundError(f"{out}: no {META}; is it an `xmodal embed --out` folder?")
  parts = []
  for shard in range(meta["shards"]):
    if not _complete(out, shard, meta["format"]):
      raise FileNotFoundError(f"{out}: {shard_name(shard)} is missing (the embedding did "
                              f"not finish; run the same `xmodal embed` again to complete it)")
    parts.append(read_shard(out, shard, meta["format"], meta["towers"]))
  rows = {"index": np.concatenate([p["index"] for p in parts]),
          "key": [k for p in parts for k in p["key"]]}
  for name in meta["towers"]:
    rows[name] = np.concatenate([p[name] for p in parts])
  return meta, rows


def read_meta(out: str) -> dict | None:
  path = os.path.join(out, META)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def _check_same(out: str, meta: dict) -> None:
  """A folder holding part of another embedding is not overwritten or mixed."""
  old = read_meta(out)
  if old is None:
    return
  for key in ("split", "towers", "rows", "shard_size", "format", "step", "workdir", "data"):
    if old.get(key) != meta.get(key):
      raise config_lib.ConfigError(
          f"--out: {out} holds embeddings with {key}={old.get(key)!r}, this run would write "
          f"{meta.get(key)!r}; use another --out (or delete the folder)")


def local_embedder(loaded) -> tuple[embed.Embedder, object]:
  """An Embedder over this process's own devices and the params placed on them."""
  if jax.process_count() == 1:                # the model's own mesh is this process's
    return loaded.embedder, loaded.params
  devices = jax.local_devices()
  mesh = parallel.make_mesh(loaded.config, devices)
  shards = mesh.shape["data"] * mesh.shape["fsdp"]
  batch = max(shards, (loaded.config.eval.batch_size // shards) * shards)
  host = jax.tree.map(lambda x: np.asarray(x.addressable_data(0)), loaded.params)
  params = jax.device_put(host, parallel.replicated(mesh))
  return embed.Embedder(loaded.model, mesh, batch), params


def embed_split(loaded, out: str, split: str = "train", towers=None, fmt: str = "npy",
                shard_size: int = 10_000, process_index: int | None = None,
                process_count: int | None = None, workdir: str = "") -> dict:
  """Writes the embeddings of `split` of loaded.config's data by `towers` (default: all)
  to `out`; returns a summary {"rows", "embedded", "skipped", "shards", "written",
  "already_there"} of this process's shards."""
  config = loaded.config
  towers = list(towers or config.towers)
  unknown = [t for t in towers if t not in config.towers]
  if unknown:
    raise config_lib.ConfigError(f"--towers: no tower {unknown[0]!r} (towers: "
                                 f"{list(config.towers)})")
  if fmt not in FORMATS:
    raise config_lib.ConfigError(f"--format: {fmt!r} is not one of {FORMATS}")
  p = jax.process_index() if process_index is None else process_index
  count = jax.process_count() if process_count is None else process_count
  reader = data_lib.Reader(config, split)
  shards = -(-len(reader) // shard_size)
  embedder, params = local_embedder(loaded)
  meta = {"workdir": os.path.abspath(workdir) if workdir else "", "step": loaded.step,
          "split": split, "source": repr(reader), "rows": len(reader), "shard_size": shard_size,
          "shards": shards, "format": fmt,
          "towers": {t: int(config.model.embed_dim) for t in towers},
          "data": json.loads(config.data.to_json()), "config": json.loads(config.to_json())}
  _check_same(out, meta)              # before anything is skipped or written
  os.makedirs(out, exist_ok=True)
  if p == 0:
    _write_meta(out, meta)
  summary = {"rows": len(reader), "embedded": 0, "skipped": 0, "shards": shards,
             "written": 0, "already_there": 0}
  chunk = max(embedder.batch_size * 4, 256)
  for shard in range(p, shards, count):
    if _complete(out, shard, fmt):
      summary["already_there"] += 1
      continue
    rows = np.arange(shard * shard_size, min(len(reader), (shard + 1) * shard_size))
    index, keys, z = [], [], {t: [] for t in towers}
    for start in range(0, len(rows), chunk):
      part = reader.read(rows[start:start + chunk], towers)
      summary["skipped"] += part.skipped
      index.append(part.rows["index"])
      keys += part.rows["key"]
      for t in towers:
        if len(part):
          z[t].append(embedder(params, t, part.rows[t]))
    z = {t: np.concatenate(v) if v else np.zeros((0, config.model.embed_dim), np.float32)
         for t, v in z.items()}
    write_shard(out, shard, fmt, np.concatenate(index), keys, z)
    summary["written"] += 1
    summary["embedded"] += len(keys)
    logging.info("embed: %s written (%d rows)", shard_name(shard), len(keys))
  return summary


def _write_meta(out: str, meta: dict) -> None:
  tmp = os.path.join(out, META + f".tmp{os.getpid()}")
  with open(tmp, "w") as f:
    json.dump(meta, f, indent=1)
  os.replace(tmp, os.path.join(out, META))
