"""Training generators: the options (``config``), the shared loop (``loop``),
SG-LoRA (``sg``, with ``selection`` choosing its K, tau and gate by task
accuracy), ICM-LoRA (``icm``), end-to-end fine-tuning through the base model
(``finetune``) and the use cases that read experts from the registry and
register the result (``train``). Serving never imports this package.
"""
