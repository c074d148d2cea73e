"""Checking what clients send before it is queued: embedding inputs, prompts, sampling settings.

Everything here runs on the HTTP side, with the server's own copy of the tokenizer (never the
worker's), and raises ``APIError`` (a 400 naming the field and the index) for bad input.

Token-id inputs (``list[int]`` or ``list[list[int]]``, as OpenAI accepts them) are decoded to
text with the tokenizer and then embedded like text: the GEM tokens, the adapter's template
and an instruction must go around the text's own tokens, and that is defined on text. A
sequence that is not what the tokenizer would produce for its text may come back slightly
different. GEM token ids are refused in inputs.
"""

from __future__ import annotations

from .errors import APIError
from .generation import SamplingParams
from .schemas import UNSUPPORTED_SAMPLING, refused_field


def _kind(value) -> str:
    return type(value).__name__


def _is_token_id(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class InputChecker:
    def __init__(self, tokenizer, gem_token_ids, settings, max_input_tokens: int, context_length: int | None):
        self.tokenizer = tokenizer
        self.gem_ids = {int(i) for i in gem_token_ids}
        self.vocab_size = len(tokenizer)
        self.settings = settings
        self.max_input_tokens = max_input_tokens
        self.context_length = context_length

    # ------------------------------------------------------------------ embeddings
    def embedding_texts(self, raw, truncate: bool) -> tuple[list[str], list[int]]:
        """The texts of an embedding ``input`` and their token counts (cut to the limit when ``truncate``)."""
        texts = self._texts(raw)
        if len(texts) > self.settings.max_inputs:
            raise APIError(400, f"input has {len(texts)} items, over this server's limit of {self.settings.max_inputs}; "
                                "send them in several requests", param="input", code="too_many_inputs")
        encoded = self.tokenizer(texts, add_special_tokens=False, return_offsets_mapping=truncate)
        counts = []
        limit = self.max_input_tokens
        for index, ids in enumerate(encoded["input_ids"]):
            if len(ids) <= limit:
                counts.append(len(ids))
                continue
            if not truncate:
                raise APIError(400, f"input[{index}] has {len(ids)} tokens, over the limit of {limit} tokens; "
                                    "shorten it, or send gem_truncate: true to cut it", param="input",
                               code="input_too_long")
            texts[index] = texts[index][: encoded["offset_mapping"][index][limit - 1][1]]
            counts.append(limit)
        return texts, counts

    def _texts(self, raw) -> list[str]:
        if isinstance(raw, str):
            if not raw:
                raise APIError(400, "input is an empty string", param="input")
            return [raw]
        if not isinstance(raw, list):
            raise APIError(400, f"input is {_kind(raw)}; expected a string, a list of strings, a list of token ids "
                                "or a list of token-id lists", param="input")
        if not raw:
            raise APIError(400, "input is an empty list", param="input")
        if all(_is_token_id(item) for item in raw):
            return [self._decode(raw, "input")]
        if isinstance(raw[0], list):
            texts = []
            for index, item in enumerate(raw):
                if not isinstance(item, list):
                    raise APIError(400, f"input[{index}] is {_kind(item)}; a list of token-id lists must hold only lists",
                                   param="input")
                texts.append(self._decode(item, f"input[{index}]"))
            return texts
        for index, item in enumerate(raw):
            if not isinstance(item, str):
                raise APIError(400, f"input[{index}] is {_kind(item)}, expected str", param="input")
            if not item:
                raise APIError(400, f"input[{index}] is an empty string", param="input")
        return list(raw)

    def _decode(self, ids: list, where: str) -> str:
        self.token_ids(ids, where)
        return self.tokenizer.decode(ids)

    def token_ids(self, ids: list, where: str) -> list[int]:
        if not ids:
            raise APIError(400, f"{where} is an empty list of token ids", param="input")
        for position, token in enumerate(ids):
            if not _is_token_id(token):
                raise APIError(400, f"{where}[{position}] is {_kind(token)}, expected a token id (int)", param="input")
            if not 0 <= token < self.vocab_size:
                raise APIError(400, f"{where}[{position}] = {token} is not a token id (vocabulary size {self.vocab_size})",
                               param="input")
            if token in self.gem_ids:
                raise APIError(400, f"{where}[{position}] = {token} is a GEM token; GEM tokens are added by the server",
                               param="input")
        return list(ids)

    # ------------------------------------------------------------------ generation
    def chat_prompt(self, messages) -> list[int]:
        """Prompt ids of a chat: the tokenizer's chat template with the generation prompt.

        The rendered text is tokenised as ``GEMModel.generate`` tokenises a string, except that a
        BOS token the template already wrote is not added a second time.
        """
        if not getattr(self.tokenizer, "chat_template", None):
            raise APIError(400, "this model's tokenizer has no chat template; use /v1/completions with a plain prompt",
                           param="messages", code="no_chat_template")
        conversation = []
        for index, message in enumerate(messages):
            content = message.content
            if content is None:
                content = ""
            elif isinstance(content, list):
                parts = []
                for j, part in enumerate(content):
                    if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                        kind = part.get("type") if isinstance(part, dict) else _kind(part)
                        raise APIError(400, f"messages[{index}].content[{j}] is {kind!r}; only text parts are supported",
                                       param=f"messages[{index}].content")
                    parts.append(part["text"])
                content = "".join(parts)
            elif not isinstance(content, str):
                raise APIError(400, f"messages[{index}].content is {_kind(content)}; expected a string or text parts",
                               param=f"messages[{index}].content")
            conversation.append({"role": message.role, "content": content})
        try:
            text = self.tokenizer.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
        except Exception as exc:  # noqa: BLE001 - templates raise for roles or orders they refuse
            raise APIError(400, f"the chat template refused these messages: {exc}", param="messages") from None
        bos = self.tokenizer.bos_token
        add_special = not (bos and text.startswith(bos))
        return self.prompt_ids(self.tokenizer(text, add_special_tokens=add_special)["input_ids"], "messages")

    def completion_prompt(self, prompt) -> list[int]:
        """Prompt ids of a completion: one string (tokenised as ``GEMModel.generate`` does) or one id list."""
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
            prompt = prompt[0]
        if isinstance(prompt, str):
            if not prompt:
                raise APIError(400, "prompt is an empty string", param="prompt")
            return self.prompt_ids(self.tokenizer(prompt)["input_ids"], "prompt")
        if isinstance(prompt, list) and prompt and all(_is_token_id(t) for t in prompt):
            return self.prompt_ids(self.token_ids(prompt, "prompt"), "prompt")
        if isinstance(prompt, list) and len(prompt) > 1:
            raise APIError(400, f"prompt holds {len(prompt)} prompts; send one prompt per request", param="prompt")
        raise APIError(400, f"prompt is {_kind(prompt)}; expected a string or a list of token ids", param="prompt")

    def prompt_ids(self, ids: list[int], param: str) -> list[int]:
        if not ids:
            raise APIError(400, "the prompt has no tokens", param=param)
        if self.context_length is not None and len(ids) >= self.context_length:
            raise APIError(400, f"the prompt has {len(ids)} tokens; this model's context is {self.context_length} tokens",
                           param=param, code="context_length_exceeded")
        return ids

    def sampling(self, body, prompt_tokens: int, max_tokens: int | None) -> SamplingParams:
        """Sampling settings of a chat or completion request; unsupported options are refused by name."""
        if body.n not in (None, 1):
            raise APIError(400, f"n = {body.n}: this server returns one choice per request", param="n")
        if body.logprobs:
            raise APIError(400, "logprobs are not supported by this server", param="logprobs")
        refused = refused_field(body, UNSUPPORTED_SAMPLING)
        if refused is not None:
            raise APIError(400, f"{refused} = {getattr(body, refused)!r} is not supported by this server; leave it out",
                           param=refused)
        for name in ("tools", "echo", "suffix"):
            if getattr(body, name, None):
                raise APIError(400, f"{name} is not supported by this server", param=name)
        if getattr(body, "best_of", None) not in (None, 1):
            raise APIError(400, "best_of is not supported by this server", param="best_of")
        response_format = getattr(body, "response_format", None)
        if response_format and (not isinstance(response_format, dict) or response_format.get("type") != "text"):
            raise APIError(400, "response_format other than text is not supported by this server", param="response_format")
        limit = self.settings.max_tokens
        if max_tokens is not None and max_tokens > limit:
            raise APIError(400, f"max_tokens = {max_tokens} is over this server's limit of {limit}", param="max_tokens")
        room = None if self.context_length is None else self.context_length - prompt_tokens
        if max_tokens is not None and room is not None and max_tokens > room:
            raise APIError(400, f"the prompt ({prompt_tokens} tokens) plus max_tokens ({max_tokens}) exceeds this "
                                f"model's context of {self.context_length} tokens", param="max_tokens",
                           code="context_length_exceeded")
        if max_tokens is None:
            max_tokens = limit if room is None else min(limit, room)
        stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
        if len(stop) > self.settings.max_stop_sequences:
            raise APIError(400, f"stop has {len(stop)} entries; at most {self.settings.max_stop_sequences}", param="stop")
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=1.0 if body.temperature is None else body.temperature,
            top_p=1.0 if body.top_p is None else body.top_p,
            seed=body.seed,
            stop=tuple(s for s in stop if s),
        )
