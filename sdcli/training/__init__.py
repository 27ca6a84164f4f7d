"""``sdcli train embedding`` and ``sdcli train lora``: teach a model a new concept from a few images.

The methods are those of diffusers' training examples (textual_inversion.py: only the new token's embedding
rows train; train_dreambooth_lora.py: peft LoRA layers on the UNet's attention, optionally the text encoder's,
with optional prior preservation), run through accelerate (device, mixed precision, backward). Modules:
``settings`` (the typed options and every check before a model loads), ``data`` (the image folder, captions,
templates), ``methods`` (what each method trains, saves and restores), ``loop`` (steps, checkpoints, --resume,
validation images, progress, the summary). Nothing here is imported by a generating run.
"""
