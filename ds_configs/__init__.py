"""DeepSpeed configs shipped with the trainer (zero1, zero2, zero3, zero3_offload), chosen by `engine.deepspeed`.

A package only so that the JSON files install with the trainer and are found the same way from a
checkout and from an installed wheel (`importlib.resources.files("ds_configs")`). docs/engine.md
says what each one does.
"""
