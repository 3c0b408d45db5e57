"""AnnData (`.h5ad`) files as a source of records, one per observation (cell, spot):
{"expression": float32 [G] (the row of X over the gene panel), every `obs` column by
name, "label": -1}. The gene panel (`data.genes`: a text file with one gene name a line,
or names separated by ","; '' = the file's genes in order) fixes the order of the
features, so files with different gene orders feed one vector tower alike; genes of the
panel a file lacks read as 0 (counted in a warning at start-up).

X is read row by row from the file (anndata's backed mode, dense or sparse), so files
larger than memory work; obs is read once. Needs the `expression` extra (anndata).
"""

import logging
import os

import numpy as np

from xmodal.data import bad, decoders, sources

EXPRESSION = "expression"


def read_panel(genes: str) -> list[str] | None:
  """`data.genes` -> gene names in order, or None (the file's own)."""
  if not genes:
    return None
  if os.path.isfile(os.path.expanduser(genes)):
    with open(os.path.expanduser(genes), encoding="utf-8") as f:
      return [line.strip() for line in f if line.strip()]
  return [g.strip() for g in genes.split(",") if g.strip()]


class AnnDataSource(sources._LazySource):
  """Random access over the observations of one or more `.h5ad` files."""

  def __init__(self, pattern: str, genes: str = ""):
    anndata = decoders.require("anndata", "expression", "h5ad")
    self.pattern, self.panel = pattern, read_panel(genes)
    self.paths, self.skipped_files = [], []
    self.obs, self.maps, self.starts = [], [], [0]
    for path in sources.expand_pattern(pattern):
      try:
        adata = anndata.read_h5ad(path, backed="r")
      except (OSError, ValueError, KeyError) as e:   # h5py's errors on damaged files
        logging.warning("%s: unreadable .h5ad (%s); skipped", path, e)
        self.skipped_files.append(path)
        continue
      self.paths.append(path)
      var = list(map(str, adata.var_names))
      panel = self.panel if self.panel is not None else var
      index = {g: i for i, g in enumerate(var)}
      take = np.array([index.get(g, -1) for g in panel], np.int64)
      if (take < 0).any():
        logging.warning("%s: %d of the %d panel genes are not in the file; they read as 0",
                        path, int((take < 0).sum()), len(panel))
      self.maps.append(take)
      self.obs.append({str(c): adata.obs[c].tolist() for c in adata.obs.columns} |
                      {"obs_name": list(map(str, adata.obs_names))})
      self.starts.append(self.starts[-1] + adata.n_obs)
      adata.file.close()
    if not self.paths:
      raise sources.SourceError(f"h5ad {pattern!r}: no readable file")
    self.num_genes = len(self.maps[0])
    if any(len(m) != self.num_genes for m in self.maps):
      raise sources.SourceError(f"{pattern}: files have different gene counts and no "
                                f"data.genes panel orders them")
    self._length, self._source = self.starts[-1], None

  @property
  def source(self):
    if self._source is None:
      import anndata   # noqa: PLC0415
      self._source = [anndata.read_h5ad(p, backed="r") for p in self.paths]
    return self._source

  def __getitem__(self, index: int) -> dict:
    f = int(np.searchsorted(self.starts, index, side="right")) - 1
    row = index - self.starts[f]
    try:
      x = self.source[f].X[row]
      x = np.asarray(x.toarray() if hasattr(x, "toarray") else x, np.float32).reshape(-1)
    except (OSError, ValueError, KeyError) as e:
      return bad.bad("unreadable", f"{self.paths[f]} row {row}: {e}")
    take = self.maps[f]
    expression = np.where(take >= 0, x[np.maximum(take, 0)], 0).astype(np.float32)
    record = {k: v[row] for k, v in self.obs[f].items()}
    record[EXPRESSION] = expression
    record.setdefault("label", -1)
    record["_where"] = f"{self.paths[f]} row {row}"
    return record

  def __repr__(self):
    return f"AnnDataSource({self.pattern!r}, {len(self)} rows, {self.num_genes} genes)"
