"""The generators' mathematics, in pure torch: tensors in, tensors out.

A LoRA as per-block rows (``layout``) and rank-one tokens (``tokens``),
distances between updates (``geometry``), SG-LoRA's expert mixtures
(``mixture``), the CVAE networks (``networks``) and the checkpoint format that
holds a trained one (``checkpoint``). Imports nothing of the project above
``registry``'s types: no database, no files, no web.
"""
