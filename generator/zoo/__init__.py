"""The zoo: one trained LoRA per task, the experts every generator learns from.

The LoRA trainer (``trainer``), what an adapter keeps besides its weights
(``artifacts``: its late-training trajectory and seed examples) and the
resumable build that trains, scores and registers them (``build``).
"""
