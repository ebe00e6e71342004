"""An example compress plugin: `lamp` (a method), `blobs` (a dataset), `widenet` (a model)."""
