"""The tokenizers an exported or merged GEM model travels with: one that embeds plain text, one that generates.

An engine fed plain text gives ``GEMModel.encode``'s embedding only if its tokenizer wraps the
text as ``encode`` does. ``embedding_tokenizer`` makes such a copy: its post-processor (a
``TemplateProcessing`` of Hugging Face ``tokenizers``) turns every text into

    [leading specials + template head] text [template tail] <|gem_0|>

with the head and tail tokenised apart from the text, so truncation cuts the text only. The
generation tokenizer is the model's own, GEM token known and nothing appended. Both are saved
by ``save_tokenizer``, which makes every transformers read ``tokenizer.json`` as it is.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..config import GEMConfig
from ..tokens import leading_special_ids

EMBEDDING_TOKENIZER = "embedding-tokenizer"
GENERATION_TOKENIZER = "generation-tokenizer"
# the template pieces' names inside the tokenizer's TemplateProcessing
_HEAD, _TAIL, _GEM = "<gem_template_head>", "<gem_template_tail>", "<gem_embedding_token>"


def embedding_tokenizer(tokenizer, config: GEMConfig):
    """A copy of ``tokenizer`` whose post-processor wraps every text as ``GEMModel.encode`` does (k = 1)."""
    import copy

    from tokenizers.processors import TemplateProcessing

    head_text, tail_text = (config.template.split("{text}", 1) if config.template is not None else ("", ""))
    ids = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"] if text else []  # noqa: E731
    head = leading_special_ids(tokenizer) + ids(head_text)
    tail = ids(tail_text)
    gem_id = tokenizer.convert_tokens_to_ids(config.gem_tokens[0])
    pieces = [(_HEAD, head), (_TAIL, tail), (_GEM, [gem_id])]
    specials = [{"id": name, "ids": piece, "tokens": tokenizer.convert_ids_to_tokens(piece)} for name, piece in pieces if piece]
    names = {name for name, piece in pieces if piece}
    single = [name for name in (_HEAD,) if name in names] + ["$A"] + [n for n in (_TAIL, _GEM) if n in names]
    pair = single + ["$B:1"]
    wrapped = copy.deepcopy(tokenizer)
    wrapped.backend_tokenizer.post_processor = TemplateProcessing(single=single, pair=pair, special_tokens=specials)
    wrapped.model_max_length = config.max_length
    return wrapped


def save_tokenizer(tokenizer, folder: Path) -> None:
    """Save so that any transformers reads tokenizer.json as it is (no class rebuilding the post-processor)."""
    tokenizer.save_pretrained(folder)
    config_path = Path(folder) / "tokenizer_config.json"
    settings = json.loads(config_path.read_text())
    settings["tokenizer_class"] = "PreTrainedTokenizerFast"
    config_path.write_text(json.dumps(settings, indent=2, ensure_ascii=False) + "\n")


__all__ = ["EMBEDDING_TOKENIZER", "GENERATION_TOKENIZER", "embedding_tokenizer", "save_tokenizer"]
