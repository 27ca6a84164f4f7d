"""The heavy libraries (diffusers, transformers, huggingface_hub), imported and quieted in one place:
sdcli reports progress itself, so their progress bars and info logs are turned off."""

from __future__ import annotations

import os


def quiet_libraries() -> None:
    """Silence library progress bars and info logs (imports diffusers and transformers: call it lazily)."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    import warnings

    import diffusers
    import huggingface_hub.utils
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    huggingface_hub.utils.disable_progress_bars()
    huggingface_hub.utils.logging.set_verbosity_error()  # "Could not reach the Hub" (cached model, no network)
    warnings.filterwarnings("ignore", category=FutureWarning, module="diffusers")
