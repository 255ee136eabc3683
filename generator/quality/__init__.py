"""The quality harness: every method and baseline scored on the held-out tasks.

``heldout``: from a description alone (the generators, the nearest expert, the
weighted mean of the top experts, SG-LoRA's mixture mean, the oracle).
``fewshot``: with k labelled examples of each task, drawn several times from
its training split (selection, weighting, refinement, ICM-LoRA with examples,
a LoraHub baseline (``lorahub``), a LoRA trained from scratch), beside the
same zero-shot columns. Both write JSON, a Markdown table and a PNG under
``$LORAMINT_HOME/results``.
"""
