"""Files in and out: decoding every Pillow mode and the evaluation transform (``pixels``), image
lists and batches (``images``), data specs and
datasets (``datasets``), the images of an analysis (``sources``), and results folders -- staged
output, manifest, overwrite policy, strict JSON, provenance (``results``)."""
