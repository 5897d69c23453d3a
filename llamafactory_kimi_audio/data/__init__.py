"""Data tools, one sub-package per product: ``convert/`` (datasets from user formats and corpora), ``features/``
(the feature cache) and ``synth/`` (synthetic demo speech)."""
