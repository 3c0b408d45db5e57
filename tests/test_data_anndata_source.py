"""AnnData observations as records (xmodal/data/anndata_source.py): the expression row over
the configured gene panel, obs columns as fields, damaged files skipped."""

import numpy as np
import pytest

from xmodal import config as config_lib
from xmodal.data import anndata_source, pipeline
from data_fixtures import data_config

anndata = pytest.importorskip("anndata")


def _write(path, n=12, genes=("CD3E", "MS4A1", "LYZ", "NKG7", "GNLY"), seed=0):
  import scipy.sparse
  rng = np.random.default_rng(seed)
  counts = rng.poisson(3, (n, len(genes))).astype(np.float32)
  import pandas as pd
  obs = pd.DataFrame({"cell_type": [f"type{i % 3}" for i in range(n)],
                      "caption": [f"cell {i} of type {i % 3}" for i in range(n)]},
                     index=[f"c{i}" for i in range(n)])
  adata = anndata.AnnData(X=scipy.sparse.csr_matrix(counts), obs=obs,
                          var=pd.DataFrame(index=list(genes)))
  adata.write_h5ad(path)
  return counts


def test_rows_follow_the_gene_panel(tmp_path):
  counts = _write(tmp_path / "a.h5ad")
  panel = tmp_path / "panel.txt"
  panel.write_text("LYZ\nCD3E\nNOT_THERE\n")
  src = anndata_source.AnnDataSource(str(tmp_path / "a.h5ad"), str(panel))
  assert len(src) == 12 and src.num_genes == 3
  rec = src[5]
  np.testing.assert_array_equal(rec["expression"], [counts[5, 2], counts[5, 0], 0])
  assert rec["cell_type"] == "type2" and rec["caption"] == "cell 5 of type 2"
  full = anndata_source.AnnDataSource(str(tmp_path / "a.h5ad"))
  np.testing.assert_array_equal(full[11]["expression"], counts[11])


def test_h5ad_feeds_a_vector_tower_and_damaged_files_are_skipped(tmp_path):
  counts = _write(tmp_path / "a.h5ad")
  (tmp_path / "b.h5ad").write_bytes(b"\x89HDF\r\n\x1a\n damaged")
  config = data_config(source="h5ad", train_files=f"{tmp_path}/*.h5ad",
                       eval_files=str(tmp_path / "a.h5ad"))
  from xmodal import default_config
  cells = default_config.tower_defaults("vector")
  cells.update(dict(width=32, depth=1, num_heads=2, features=5, transform="log1p",
                    field="expression"))
  config.towers = default_config.ConfigDict({"cells": cells, "text": config.towers.text})
  config_lib.validate(config, 1)
  batch = next(iter(pipeline.train_dataset(config)))
  assert batch["cells"].shape == (8, 5) and batch["text"].shape == (8, 24)
  ev = pipeline.eval_arrays(config)
  np.testing.assert_allclose(ev["cells"], np.log1p(counts), rtol=1e-6)
  assert ev["caption"][3] == "cell 3 of type 0"
