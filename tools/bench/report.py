"""``bench.md``: the measured results as markdown tables.
"""

from __future__ import annotations


def markdown(results: dict) -> str:
    m = lambda s: f"{s['median']:.3g} ({s['min']:.3g}-{s['max']:.3g})"  # noqa: E731
    lines = [f"Machine: {results['machine']}; torch {results['torch']} ({results['threads']} threads); "
             f"repeats {results['repeats']}. Cells: median (min-max).", ""]
    if "train" in results:
        t = results["train"]
        lines += [f"### Training step (batch {t['batch']}, {t['measured_steps_per_run']} timed steps per run after "
                  f"{t['warmup_steps']} warm-up)", "",
                  "| precision | tokens/step | plain TRL SFT s/step | GEM s/step | GEM / plain | GEM+contrastive s/step | (GEM+c) / plain |",
                  "|---|---|---|---|---|---|---|"]
        for r in t["rows"]:
            c = r.get("gem_contrastive_s_per_step")
            lines.append(f"| {r['precision']} | {r['tokens_per_step']} | {m(r['plain_s_per_step'])} | {m(r['gem_s_per_step'])} | "
                         f"**{r['gem_over_plain']}** | {m(c) if c else ''} | {r.get('gem_contrastive_over_plain', '')} |")
        lines.append("")
    if "encode" in results:
        e = results["encode"]
        s = e["sentences_per_s"]
        lines += [f"### Embedding throughput ({e['texts']} STSB dev sentences, batch {e['batch']}, sentences/s)", "",
                  "| sentence-transformers mean | GEMModel.encode gem | GEMModel.encode mean | gem / ST | mean / ST |",
                  "|---|---|---|---|---|",
                  f"| {m(s['sentence_transformers_mean'])} | {m(s['gem_encode_gem'])} | {m(s['gem_encode_mean'])} | "
                  f"**{e['gem_over_st']}** | {e['gem_mean_over_st']} |", ""]
    if "memory" in results:
        mem = results["memory"]
        lines += ["### Memory (peak RSS = VmHWM, MB, a fresh process each; medians)", "",
                  "| variant | after import | after load | after encode | weights (get_memory_footprint) | peak / fp32 | "
                  "peak above import / fp32 | weights / fp32 |", "|---|---|---|---|---|---|---|---|"]
        for name, row in mem["median"].items():
            r = mem.get(name, {})
            lines.append(f"| {name} | {row['peak_mb_after_import']} | {row['peak_mb_after_load']} | {row['peak_mb_after_encode']} | "
                         f"{row['weights_mb']} | {r.get('peak_rss_over_fp32', 1.0)} | {r.get('peak_rss_above_import_over_fp32', 1.0)} | "
                         f"{r.get('weights_over_fp32', 1.0)} |")
        lines.append("")
    if "merged" in results and "skipped" not in results["merged"]:
        g = results["merged"]
        lines += [f"### Merged vs adapter vs base ({g['texts']} sentences encoded with the adapter's template; {g['generate_setup']})", "",
                  "| model | encode sentences/s | encode / base | generate tokens/s | generate / base |", "|---|---|---|---|---|"]
        for name in g["encode_sentences_per_s"]:
            lines.append(f"| {name} | {m(g['encode_sentences_per_s'][name])} | {g.get(f'encode_{name}_over_base', 1.0)} | "
                         f"{m(g['generate_tokens_per_s'][name])} | {g.get(f'generate_{name}_over_base', 1.0)} |")
        lines += ["", "adapter_unfused: PEFT LoRA layers run beside the base weights (before the speed work); "
                  "adapter_fused: GEMModel's default since, deltas folded into the weights at load.", ""]
    if "scaling" in results:
        lines += ["### Scaling (seconds per batch)", "", "| seq len | k | batch | mask | forward | forward+backward | encode | mask / forward |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in results["scaling"]["rows"]:
            lines.append(f"| {r['seq_len']} | {r['k']} | {r['batch']} | {m(r['mask_s'])} | {m(r['forward_s'])} | "
                         f"{m(r['forward_backward_s'])} | {m(r['encode_s'])} | {r['mask_share_of_forward']} |")
        lines += ["", results["scaling"]["note"], ""]
    if "precision" in results:
        p = results["precision"]
        flags = ", ".join(f"{flag} {'yes' if present else 'no'}" for flag, present in p["cpu_flags"].items())
        lines += ["### bfloat16 vs float32 (one process, alternating)", "",
                  f"Device: {p.get('device', 'cpu')}. CPU flags: {flags}. {p['auto']}.", "",
                  "| workload | dtype | rate | est. GFLOP/s | MFU (vs this dtype's best matmul) | bf16 / fp32 rate |",
                  "|---|---|---|---|---|---|"]
        for r in p["rows"]:
            ratio_cell = f"**{p['bf16_over_fp32'][r['workload']]}**" if r["dtype"] == "bfloat16" else ""
            lines.append(f"| {r['workload']} | {r['dtype']} | {m(r['rate'])} {r['unit']} | {r['gflops']} | {r['mfu']} | {ratio_cell} |")
        lines += ["", p["setup"] + ". FLOPs: 2 x parameters x tokens per forward pass, x3 for a training step "
                  "(attention's length term left out).", ""]
        for dtype, ops in (p.get("train_step_profile") or {}).items():
            lines += [f"Training step, {dtype}: top operators by self time (torch.profiler)", "",
                      "| operator | self ms | share | calls |", "|---|---|---|---|"]
            lines += [f"| {o['op']} | {o['self_ms']} | {o['share']} | {o['calls']} |" for o in ops]
            lines.append("")
    return "\n".join(lines)
