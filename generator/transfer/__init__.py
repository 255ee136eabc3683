"""Trans-LoRA: moving an adapter to another base model with synthetic data.

Settings (``config``), synthetic inputs (``synthesis``), the discriminator
filter (``discriminator``), knowledge distillation (``distill``), the source
adapter and the request (``source``) and the resumable job (``job``). Only
``api`` and ``bench`` import this package.
"""
