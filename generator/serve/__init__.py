"""Serving generators: a loaded generator that decodes batches of requests
(``generator``) and the one generation path that picks the serving generator,
generates and registers (``generate``). Never imports ``generator.fit``.
"""
