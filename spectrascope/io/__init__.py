"""Files in and out: image decoding and the evaluation transform (``images``), data specs and
datasets (``datasets``), the images of an analysis (``sources``), and results folders -- staged
output, manifest, overwrite policy, strict JSON, provenance (``results``)."""
