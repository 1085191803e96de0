"""Files in and out. In: decoding every Pillow mode and the evaluation transform (``pixels``),
image lists and batches (``images``), the images of an analysis (``sources``), data specs
(``specs``) and their data sets (``synthetic``, ``cifar``, ``folders``, ``bundles``), training
transforms (``transforms``, ``randaugment``, ``mixing``), the analyses' image cache (``cache``),
JSON that comes from outside checked against its schema (``schema``). Out: results folders --
staged output, manifest, overwrite policy, strict JSON, provenance (``results``), claims on
output folders (``claims``), failed writes in one line (``failures``), output names (``naming``).
``datasets`` re-exports the data names under their earlier import path."""
