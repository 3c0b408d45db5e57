"""data.source="h5ad": AnnData observations over the gene panel data.genes
(xmodal/data/anndata_source.py; the `expression` extra)."""

from xmodal.data.source_kinds import _files

READY, MIXABLE = False, True
where = _files.where


def check(config, split, field=None, pattern=None):
  if field is None:
    field, pattern = where(config, split)
  _files.check(field, pattern, "h5ad", split)


def open(pattern, config, split):   # noqa: A001
  from xmodal.data import anndata_source   # noqa: PLC0415
  return anndata_source.AnnDataSource(pattern, config.data.genes)
