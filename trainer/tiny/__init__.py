"""Tiny random models and generated multilingual text: what tests and demos use instead of hub
downloads (`tiny:llama`, `tiny:nllb`, ...; the demo's pseudo-languages, parallel text and task)."""
