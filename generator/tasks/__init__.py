"""Tasks: what an adapter is trained and scored on, and how a base model reads them.

The task format and suites on disk (``task``), the prompt contract shared by
training, scoring and transfer (``prompting``), rank-classification scoring
(``scoring``), the evaluation harness (``evaluation``), ICM-LoRA's in-context
task vector (``task_vector``) and the default suite's builders (``suite``).
Imports nothing of the project but ``registry``.
"""
