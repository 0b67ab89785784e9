"""The bench's report: the machine it ran on and markdown tables of its results."""
from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

import torch
import torchvision


def loader_name(kind: str, workers: int) -> str:
    """The result key of a DataLoader baseline: `kind` of images, `workers` processes."""
    return f"dataloader_{kind}_{workers}_workers"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: torch.device, timm_version: str, precision: str) -> dict[str, Any]:
    """The machine, the versions and `precision`, "bf16" or "fp32": what the train steps ran
    in (device.use_bf16 of train.precision on `device`)."""
    assert precision in ("bf16", "fp32"), precision
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model()
    return {"device": str(device), "device_name": name, "cpu": cpu_model(),
            "cpu_count": os.cpu_count(), "threads": torch.get_num_threads(),
            "precision": "bf16 autocast" if precision == "bf16" else "fp32",
            "python": platform.python_version(), "torch": torch.__version__,
            "torchvision": torchvision.__version__, "timm": timm_version}


def markdown_table(rows: list[list[str]], header: list[str]) -> str:
    """A markdown table; every column but the first right-aligned."""
    align = ["---"] + ["---:"] * (len(header) - 1)
    return "\n".join("| " + " | ".join(r) + " |" for r in [header, align, *rows])


def sizes(m: dict[str, Any]) -> str:
    return (f"dim {m['dim']}, depth {m['depth']}, heads {m['heads']}, patch {m['patch_size']}, "
            f"mlp x{m['mlp_ratio']:g}, image {m['image_size']}")


def pipeline_rows(p: dict[str, Any]) -> list[tuple[str, str]]:
    rows = [("ours", "vitlens on-device crop/flip + normalise")]
    if "ours_1_thread" in p:
        rows.append(("ours_1_thread", "vitlens on-device, torch on 1 thread"))
    images = {"tensor": "uint8 tensors", "pil": "PIL images"}
    return rows + [(loader_name(kind, w), f"DataLoader, per-image transforms on {images[kind]}, "
                    f"{w} workers") for kind, w in p["loaders"]]


def model_table(m: dict[str, Any]) -> str:
    rows = [[name, f"{m[k]['params']:,}", f"{m[k]['images_per_second']:.1f}",
             f"{m[k]['median_s'] * 1e3:.1f}"]
            for k, name in (("ours", "vitlens ViT"), ("timm", "timm VisionTransformer"))]
    return (markdown_table(rows, ["train step", "params", "images/s", "median ms/step"])
            + f"\n\nours / timm: {m['ratio_ours_over_timm']:.2f}x "
            f"(median of per-round ratios: {m['paired_ratio_ours_over_timm']:.2f}x)")


ATTENTION_KERNELS = (("sdpa_default", "SDPA, its own choice"), ("sdpa_flash", "SDPA flash"),
                     ("sdpa_math", "SDPA math"), ("explicit", "explicit softmax(qk^T)v"))


def attention_table(a: dict[str, Any]) -> str:
    """One table per shape: forward + backward of every block's attention, per kernel."""
    out = []
    for shape, r in a.items():
        B, H, N, D = r["shape_b_heads_n_d"]
        rows = [[name, f"{r[k]['median_ms']:.1f}",
                 f"{r['sdpa_default']['median_ms'] / r[k]['median_ms']:.2f}x",
                 f"{r[k]['max_abs_diff']:.1e}"] for k, name in ATTENTION_KERNELS if k in r]
        rows += [[name, "failed", "", r[f"{k}_failed"]] for k, name in ATTENTION_KERNELS
                 if f"{k}_failed" in r]
        out.append(markdown_table(rows, [f"attention, {shape}: B {B}, heads {H}, tokens {N}, "
                                         f"head dim {D}, x{r['blocks']} blocks", "ms fwd+bwd",
                                         "vs SDPA default", "max |diff|"])
                   + f"\n\nfastest: {r['fastest']}")
    return "\n\n".join(out)


def loop_table(lp: dict[str, Any]) -> str:
    rows = [["loop.train, epoch 2", f"{lp['loop_images_per_second']:.1f}"],
            ["bare optimizer step, one ready batch", f"{lp['step_images_per_second']:.1f}"]]
    return (markdown_table(rows, [f"loop vs step (batch {lp['batch_size']}, "
                                  f"{lp['steps_per_epoch']} steps/epoch, {lp['precision']})",
                                  "images/s"])
            + f"\n\nloop / step: {lp['ratio_loop_over_step']:.2f}")


def precision_table(pr: dict[str, Any]) -> str:
    rows = [[name, f"{pr[name]['images_per_second']:.1f}", f"{pr[name]['median_s'] * 1e3:.0f}"]
            for name in ("fp32", "bf16")]
    flags = ", ".join(pr["native_bf16_flags"]) or "none"
    return (markdown_table(rows, [f"train step, batch {pr['batch_size']}", "images/s", "median ms"])
            + f"\n\nbf16 / fp32: {pr['speedup_bf16_over_fp32']:.2f}x (paired); "
            f"the CPU's native-bf16 flags: {flags}")


def pipeline_table(p: dict[str, Any]) -> str:
    best = p[p["best_dataloader"]]["images_per_second"]
    rows = [[name, f"{p[k]['images_per_second']:,.0f}", f"{p[k]['median_s'] * 1e3:.1f}",
             f"{p[k]['images_per_second'] / best:.2f}x"] for k, name in pipeline_rows(p)]
    header = [f"data pipeline ({p['images']:,} images)", "images/s", "median ms/epoch",
              "vs best DataLoader"]
    return (markdown_table(rows, header)
            + f"\n\nours / best DataLoader: {p['ratio_ours_over_best_dataloader']:.2f}x "
            f"(median of per-round ratios: {p['paired_ratio_ours_over_best_dataloader']:.2f}x)")


def levers_table(lv: dict[str, Any]) -> str:
    rows = [[name, f"{lv[name]['median_s'] * 1e3:.2f}",
             f"{lv[name]['extra_share_of_step']:+.1%}" if name != "plain" else ""]
            for name in lv if name != "step_s"]
    return markdown_table(rows, ["a batch with each lever on", "median ms/batch",
                                 f"extra, of a {lv['step_s'] * 1e3:.0f} ms step"])


def epoch_table(ep: dict[str, Any]) -> str:
    if "skipped" in ep:
        return f"epoch estimate skipped: {ep['skipped']}"
    rows = [[k, f"{ep[k]['images_per_second']:,.0f}", f"{ep[k]['first_step_s']:.1f}",
             f"{ep[k]['epoch_s']:.1f}", f"{ep[k]['total_s']:.0f}"] for k in ("eager", "compiled")]
    n = ep["epochs"]
    return markdown_table(rows, [f"{n}-epoch estimate ({ep['train_images']:,} train + "
                        f"{ep['val_images']:,} val images/epoch)", "train images/s",
                        "first step s", "s/epoch", f"s for {n} epochs"])


def report(r: dict[str, Any]) -> str:
    e, c = r["environment"], r["config"]
    load = e["load_average_1m"]
    head = [f"# vitlens bench: {e['device_name']} ({e['device']}, {e['threads']} threads, "
            f"{e['precision']}), torch {e['torch']}, timm {e['timm']}",
            f"batch {c['batch_size']}, {c['warmup']} warm-up + {c['steps']} timed steps per "
            f"model in {c['rounds']} alternating rounds; model {sizes(c['model'])}",
            f"1-minute load average: {load['before']:.2f} before, {load['after']:.2f} after"]
    return "\n\n".join(["\n".join(head), model_table(r["models"]), attention_table(r["attention"]),
                         loop_table(r["loop"]), precision_table(r["precision"]),
                         pipeline_table(r["pipeline"]), levers_table(r["levers"]),
                         epoch_table(r["epochs"])])
