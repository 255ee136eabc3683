"""Few-shot adaptation: a caller's labelled examples turn candidate adapters into one.

The examples and their checks (``examples``), how an adapter does on them
(``scoring``), choosing among fixed candidates with a nested cross-validation
estimate (``selection``), fitting the nearest experts' mixture weights
(``weighting``), training further with early stopping (``refine``) and the
pipeline that runs them and reports what it chose and why (``pipeline``).
Imports ``registry``, ``tasks`` and the zoo's trainer only; the serving layer
supplies the candidates.
"""
