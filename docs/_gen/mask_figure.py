"""Draw docs/img/gem-mask.png from ``gem_adapter.masking``'s own output.

    .venv/bin/python docs/_gen/mask_figure.py

Two panels: a training sample (prefix, k = 2 GEM tokens, suffix) and a left-padded text being
embedded with k = 4. Each cell is what ``build_gem_attention_mask`` returns for that query and
key. The segment ids and the masks drawn are stored in the PNG's ``Description`` text chunk, so
``tests/test_docs.py`` can check that the committed picture is what ``masking.py`` builds today
without comparing pixels (which change with matplotlib and font versions). Rerun this script
when that test says the figure is stale.
"""

from __future__ import annotations

import json
from pathlib import Path

from gem_adapter.masking import Segment, build_gem_attention_mask

FIGURE = Path(__file__).resolve().parents[1] / "img" / "gem-mask.png"
PAD, PREFIX, GEM, SUFFIX = Segment.PAD, Segment.PREFIX, Segment.GEM, Segment.SUFFIX

# (title, segment ids of one row)
PANELS: list[tuple[str, list[int]]] = [
    ("training sample: prefix, k = 2 GEM tokens, suffix", [PREFIX] * 5 + [GEM] * 2 + [SUFFIX] * 4),
    ("embedding, left padding, k = 4", [PAD] * 2 + [PREFIX] * 5 + [GEM] * 4),
]
LABEL = {PAD: "pad", PREFIX: "t", GEM: "G", SUFFIX: "s"}
COLOUR = {PAD: "#bbbbbb", PREFIX: "#4c72b0", GEM: "#dd8452", SUFFIX: "#55a868"}


def masks() -> list[list[list[int]]]:
    """The mask of each panel as 0/1 rows (query x key), straight from ``build_gem_attention_mask``."""
    import torch

    return [build_gem_attention_mask(torch.tensor([segments]))[0, 0].int().tolist() for _, segments in PANELS]


def description() -> str:
    """What the figure shows, as the JSON the PNG carries: every panel's segments and mask."""
    return json.dumps({"panels": [{"title": title, "segments": [int(s) for s in segments], "mask": mask}
                                  for (title, segments), mask in zip(PANELS, masks())]}, separators=(",", ":"))


def tick_labels(segments: list[int]) -> list[str]:
    counts: dict[int, int] = {}
    labels = []
    for segment in segments:
        counts[segment] = counts.get(segment, 0) + 1
        labels.append(f"{LABEL[segment]}{counts[segment]}" if segment != PAD else "pad")
    return labels


def draw(path: Path = FIGURE) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    fig, axes = plt.subplots(1, len(PANELS), figsize=(11, 5.2))
    for ax, (title, segments), mask in zip(axes, PANELS, masks()):
        # cell value: 0 blocked, else the key's segment id + 1, so an allowed cell takes its key's colour
        cells = [[(segments[k] + 1) if allowed else 0 for k, allowed in enumerate(row)] for row in mask]
        palette = ["white"] + [COLOUR[Segment(i)] for i in range(len(Segment))]
        ax.imshow(cells, cmap=ListedColormap(palette), vmin=0, vmax=len(palette) - 1)
        labels = tick_labels(segments)
        ax.set_xticks(range(len(segments)), labels, rotation=90, fontsize=8)
        ax.set_yticks(range(len(segments)), labels, fontsize=8)
        ax.set_xticks([x - 0.5 for x in range(len(segments) + 1)], minor=True)
        ax.set_yticks([y - 0.5 for y in range(len(segments) + 1)], minor=True)
        ax.grid(which="minor", color="#dddddd", linewidth=0.6)
        ax.tick_params(which="minor", length=0)
        for position in range(1, len(segments)):  # a darker line where one segment ends and the next begins
            if segments[position] != segments[position - 1]:
                ax.axvline(position - 0.5, color="black", linewidth=1)
                ax.axhline(position - 0.5, color="black", linewidth=1)
        ax.set_xlabel("key (attended to)")
        ax.set_ylabel("query (attending)")
        ax.set_title(title, fontsize=10)
    fig.suptitle("GEM attention mask from gem_adapter.masking.build_gem_attention_mask "
                 "(coloured: may attend, by the key's role; white: blocked)", fontsize=10)
    fig.text(0.5, 0.01, "t: text before the GEM tokens (prefix)   G: GEM token   s: suffix   pad: padding",
             ha="center", fontsize=9)
    fig.tight_layout(rect=(0, 0.03, 1, 0.95))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, metadata={"Description": description()})
    plt.close(fig)
    return path


def stored_description(path: Path = FIGURE) -> str | None:
    """The ``Description`` text chunk of a PNG, or None when it has none."""
    from PIL import Image

    with Image.open(path) as image:
        return image.text.get("Description")


if __name__ == "__main__":
    print(draw())
