"""Performance benchmark: GEM against the plain baselines, side by side in one process.

    python tools/bench --out bench                       # every section, CPU-sized defaults
    python tools/bench --sections encode,scaling --repeats 5
    python tools/bench --adapter runs/smollm2-135m-all-tokens   # adds merged vs adapter vs base

One module per section (each comparison alternates its candidates repeat by repeat, so drift in the
machine's speed hits them alike; numbers are medians with min/max over repeats):

* ``train``   seconds per optimizer step: GEM training (mixed NTP through 4D GEM masks,
  GEMTrainer) vs plain LoRA causal-LM training (trl.SFTTrainer), same model, LoRA, batch,
  chunks, precision, optimizer and no activation checkpointing; fp32 and 4-bit NF4. The
  GEM row with the contrastive term is reported too (it runs two more forward passes by
  design, so it is not part of the overhead ratio).
* ``encode``  sentences/s: ``GEMModel.encode`` (GEM pooling, and mean pooling) vs
  sentence-transformers with the same backbone and mean pooling, same texts and batch size.
* ``memory``  peak resident memory (VmHWM, the high-water mark) of loading the model and encoding, 4-bit
  vs float32, each in a fresh child process (a peak cannot be measured twice in one).
* ``merged``  encode and generate speed of the merged checkpoint vs base + adapter vs the
  plain base (needs ``--adapter``).
* ``scaling`` forward+backward time of a GEM training batch, encode time, and the cost of
  building the mask alone, for sequence lengths 64..512 and for k = 1, 2, 4.
* ``precision`` bfloat16 vs float32: a 1024x1024 matmul's GFLOP/s (each dtype's peak), encode
  sentences/s, greedy generate tokens/s and one LoRA training step (forward+backward+AdamW),
  each with estimated GFLOP/s and MFU against that dtype's matmul peak; records the CPU's
  bfloat16 flags (without AMX-BF16/AVX512-BF16, bfloat16 is emulated and slower).

Writes ``bench.json`` and ``bench.md`` to ``--out``. A benchmark, not a test: nothing here
asserts a time.
"""

SECTIONS = ("train", "encode", "memory", "merged", "scaling", "precision")
