"""Tokenizer, chat template and the incremental detokenizer, from the checkpoint directory only."""

from __future__ import annotations

import json
import os
from pathlib import Path

from tokenizers.decoders import DecodeStream

from llmserve.engine.sampling_params import InvalidRequest

MAX_MESSAGES = 256


class Tokenizer:
    def __init__(self, checkpoint_dir: Path):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import AutoTokenizer

        # Local files only, no remote code: the chat template is a jinja2 template rendered in a sandbox.
        self.hf = AutoTokenizer.from_pretrained(checkpoint_dir, local_files_only=True, trust_remote_code=False)
        self.backend = self.hf.backend_tokenizer
        self.eos_token_ids = frozenset(self._eos_ids(checkpoint_dir))

    def _eos_ids(self, checkpoint_dir: Path) -> set[int]:
        ids: set[int] = set()
        gen_path = checkpoint_dir / "generation_config.json"
        if gen_path.is_file():
            eos = json.loads(gen_path.read_text()).get("eos_token_id")
            ids.update(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if self.hf.eos_token_id is not None:
            ids.add(self.hf.eos_token_id)
        return ids

    def encode(self, text: str) -> list[int]:
        return self.backend.encode(text, add_special_tokens=True).ids

    def apply_chat_template(self, messages: object) -> list[int]:
        if not isinstance(messages, list) or not messages:
            raise InvalidRequest("messages", "expected a non-empty JSON list of {role, content} objects")
        if len(messages) > MAX_MESSAGES:
            raise InvalidRequest("messages", f"at most {MAX_MESSAGES} messages")
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
                raise InvalidRequest("messages", f"message {i} must be an object with string 'role' and 'content'")
        if not self.hf.chat_template:
            raise InvalidRequest("messages", "this model has no chat template; send text_input instead")
        text = self.hf.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        # The template already wrote any BOS it wants.
        return self.backend.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return self.backend.decode(ids, skip_special_tokens=skip_special_tokens)

    def detokenizer(self, skip_special_tokens: bool = True) -> Detokenizer:
        return Detokenizer(self.backend, skip_special_tokens)


class Detokenizer:
    """Turns a token stream into text deltas: never splits a UTF-8 character, never drops a space.

    tokenizers' DecodeStream decodes a sliding window and returns only the new suffix once it forms
    whole characters (None while a multi-byte character is incomplete).
    """

    def __init__(self, backend, skip_special_tokens: bool):
        self.backend = backend
        self.stream = DecodeStream(skip_special_tokens=skip_special_tokens)

    def add(self, token_ids: list[int]) -> str:
        parts = []
        for t in token_ids:
            piece = self.stream.step(self.backend, t)
            if piece:
                parts.append(piece)
        return "".join(parts)
