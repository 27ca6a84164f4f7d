"""Prompts -> text-encoder embeddings, by the job's prompt syntax (``--prompt-syntax``) and ``--clip-skip``.

- ``a1111`` (default): AUTOMATIC1111's weighting. The prompt is split into 75-token chunks (at ``BREAK``, and at
  a comma within the last 20 tokens of a full chunk), each chunk is encoded alone between its start and end
  tokens, each token's vector is multiplied by its weight and the chunk rescaled to its unweighted mean, and
  the chunks are concatenated. A prompt without syntax that fits one chunk takes the pipeline's own
  ``encode_prompt``: its pixels are those of a plain diffusers run.
- ``compel``: the compel library (its syntax: ``word+``, ``(word)1.3``, ``.blend()`` ...), long prompts
  chunked by compel.
- ``none``: the pipeline's own encoding; a prompt beyond the window is cut (pipeline.py warns which words).

Clip skip is A1111's: 1 is the last layer, 2 the one before (diffusers' ``clip_skip`` counts from 0).
``<lora:...>`` tags are removed from the text first (adapters.py applies them).
"""

from __future__ import annotations

from typing import Any, Optional

from .prompt_syntax import Fragment, is_plain, parse_attention, strip_lora_tags

CHUNK = 75  # tokens between the start and end tokens of one text-encoder window
COMMA_BACKTRACK = 20  # A1111's comma_padding_backtrack


class PromptEncoder:
    """Encodes prompts for one loaded pipeline (its tokenizer, text encoder and loaded embeddings)."""

    def __init__(self, pipe: Any):
        self.pipe = pipe
        self.tokenizer = pipe.tokenizer
        self.native = "clip_skip" in _parameters(getattr(pipe, "encode_prompt", None))
        self.compels: dict[int, Any] = {}
        vocab = self.tokenizer.get_vocab()
        self.comma = vocab.get(",</w>")

    # --- which path -------------------------------------------------------------------------------

    def plain(self, text: str) -> bool:
        """Text the pipeline's own encoding handles exactly: no syntax, one window."""
        return is_plain(text) and len(self.token_ids(text)) <= CHUNK

    def token_ids(self, text: str) -> list[int]:
        if hasattr(self.pipe, "maybe_convert_prompt"):
            text = self.pipe.maybe_convert_prompt(text, self.tokenizer)  # multi-vector embeddings
        return self.tokenizer(text, add_special_tokens=False, truncation=False).input_ids

    def needs_embeds(self, prompt: str, negative: str, syntax: str, clip_skip: int) -> bool:
        """False: the pipeline may encode the texts itself (today's pixels, its own truncation)."""
        prompt, negative = strip_lora_tags(prompt), strip_lora_tags(negative)
        if clip_skip > 1 or syntax == "compel":  # diffusers' own clip_skip fails with transformers 5
            return True
        return syntax == "a1111" and not (self.plain(prompt) and self.plain(negative))

    # --- encoding ---------------------------------------------------------------------------------

    def encode(self, prompt: str, negative: str, guided: bool, syntax: str, clip_skip: int):
        """(prompt embeddings, negative embeddings or None when unguided), each of shape (1, tokens, dim);
        both of the same length."""
        import torch

        prompt, negative = strip_lora_tags(prompt), strip_lora_tags(negative)
        with torch.inference_mode():
            if syntax == "compel":
                return self._compel(prompt, negative, guided, clip_skip)
            if self.native and not self.needs_embeds(prompt, negative, syntax, clip_skip):
                return self.pipe.encode_prompt(prompt, self.pipe._execution_device, 1, guided, negative)
            truncate = syntax == "none"
            pe = self.a1111(prompt, clip_skip, truncate)
            if not guided:
                return pe, None
            ne = self.a1111(negative, clip_skip, truncate)
            return pad_to_same_length(pe, ne, self.empty_chunk(clip_skip))

    def chunks(self, text: str, truncate: bool = False) -> list[tuple[list[int], list[float]]]:
        """A1111's chunks of a prompt: (77 token ids, 77 weights) each."""
        out: list[tuple[list[int], list[float]]] = []
        tokens: list[int] = []
        weights: list[float] = []
        last_comma = -1

        def next_chunk() -> None:
            nonlocal tokens, weights, last_comma
            out.append(self.window(tokens, weights))
            tokens, weights, last_comma = [], [], -1

        fragments = [Fragment(text)] if truncate else parse_attention(text)
        for frag in fragments:
            if frag.is_break:
                next_chunk()
                continue
            for token in self.token_ids(frag.text) if frag.text else []:
                if token == self.comma:
                    last_comma = len(tokens)
                elif len(tokens) == CHUNK and last_comma != -1 and len(tokens) - last_comma <= COMMA_BACKTRACK:
                    at = last_comma + 1
                    moved, moved_w = tokens[at:], weights[at:]
                    tokens, weights = tokens[:at], weights[:at]
                    next_chunk()
                    tokens, weights = moved, moved_w
                if len(tokens) == CHUNK:
                    next_chunk()
                tokens.append(token)
                weights.append(frag.weight)
        if tokens or not out:
            next_chunk()
        return out[:1] if truncate else out

    def window(self, tokens: list[int], weights: list[float]) -> tuple[list[int], list[float]]:
        """One text-encoder window: start, tokens, end, then padding (as the tokenizer pads to max_length)."""
        tok = self.tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        ids = [tok.bos_token_id, *tokens, tok.eos_token_id]
        ids += [pad] * (CHUNK + 2 - len(ids))
        return ids, [1.0, *weights] + [1.0] * (CHUNK + 1 - len(weights))

    def a1111(self, text: str, clip_skip: int, truncate: bool = False):
        import torch

        zs = []
        for ids, weights in self.chunks(text, truncate):
            zs.append(apply_weights(self.encode_window(ids, clip_skip), weights))
        return torch.cat(zs, dim=1)

    def encode_window(self, ids: list[int], clip_skip: int):
        import torch

        te = self.pipe.text_encoder
        device = self.pipe._execution_device
        tensor = torch.tensor([ids], device=device)
        mask = None
        if getattr(te.config, "use_attention_mask", False):
            first_end = ids.index(self.tokenizer.eos_token_id) + 1
            mask = torch.tensor([[1] * first_end + [0] * (len(ids) - first_end)], device=device)
        if clip_skip > 1:
            out = te(tensor, attention_mask=mask, output_hidden_states=True)
            z = getattr(te, "text_model", te).final_layer_norm(out.hidden_states[-clip_skip])  # transformers 4 / 5
        else:
            z = te(tensor, attention_mask=mask)[0]
        return z.to(dtype=te.dtype, device=device)

    def empty_chunk(self, clip_skip: int):
        return self.encode_window(self.window([], [])[0], clip_skip)

    def _compel(self, prompt: str, negative: str, guided: bool, clip_skip: int):
        compel = self.compel(clip_skip)
        pe = compel.build_conditioning_tensor(prompt)
        if not guided:
            return pe, None
        ne = compel.build_conditioning_tensor(negative)
        pe, ne = compel.pad_conditioning_tensors_to_same_length([pe, ne])
        return pe, ne

    def compel(self, clip_skip: int):
        if clip_skip not in self.compels:
            from compel import Compel, DiffusersTextualInversionManager, ReturnedEmbeddingsType

            kind = ReturnedEmbeddingsType.PENULTIMATE_HIDDEN_STATES_NORMALIZED if clip_skip == 2 \
                else ReturnedEmbeddingsType.LAST_HIDDEN_STATES_NORMALIZED
            self.compels[clip_skip] = Compel(
                tokenizer=self.tokenizer, text_encoder=self.pipe.text_encoder, truncate_long_prompts=False,
                textual_inversion_manager=DiffusersTextualInversionManager(self.pipe), returned_embeddings_type=kind,
                device=str(self.pipe._execution_device))
        return self.compels[clip_skip]


def apply_weights(z, weights: list[float]):
    """A1111's emphasis ("Original"): each token's vector times its weight, then the chunk rescaled to its
    unweighted mean. (A mean too close to 0 to divide by, as in random-weight models, is left as it is.)"""
    import torch

    if all(w == 1.0 for w in weights):
        return z
    mean = z.mean()
    z = z * torch.tensor(weights, dtype=z.dtype, device=z.device).reshape(1, -1, 1)
    new = z.mean()
    if abs(float(new)) > 1e-4 * float(z.abs().mean()) and float(mean) * float(new) > 0:
        z = z * (mean / new)
    return z


def pad_to_same_length(a, b, empty):
    """Two prompt encodings brought to the same number of chunks with empty-prompt chunks (A1111, compel)."""
    import torch

    def padded(z, chunks: int):
        missing = chunks - z.shape[1] // empty.shape[1]
        return torch.cat([z, *[empty.to(z.dtype)] * missing], dim=1) if missing > 0 else z

    chunks = max(a.shape[1], b.shape[1]) // empty.shape[1]
    return padded(a, chunks), padded(b, chunks)


def _parameters(fn: Optional[Any]) -> tuple:
    import inspect

    return tuple(inspect.signature(fn).parameters) if fn is not None else ()
