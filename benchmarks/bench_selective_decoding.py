"""Selective against uniform decoding of generated shape streams: decodes saved at equal quality.

Runs ``jepa-lightning decode-streams`` (:func:`jepa_lightning.streams.evaluate.decode_streams`)
on a captioner (a VL-JEPA export with its Y-decoder, from ``jepa-lightning export-decoder``):
streams of moving shapes whose scene cuts at random times, every frame embedded as ``ŝ`` by
the image model, each segment decoded once from its mean embedding. For each selective method
(agglomerative clustering along time; the cosine change detector) and each uniform budget, it
reports how many times fewer decodes the selective method needs to reach uniform decoding's
ROUGE-L there (linear between measured budgets). The headline is that ratio at uniform
decoding's best quality (its largest budget); the VL-JEPA paper reports 2.85x.

Quality is not speed: the figures do not depend on the machine's load. Usage::

    python benchmarks/bench_selective_decoding.py --model exported/captioner
    python benchmarks/bench_selective_decoding.py --smoke      # a tiny random model
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import common

from jepa_lightning.streams.evaluate import ratio_text

PAPER_RATIO = 2.85


def tiny_captioner(folder: Path) -> str:
    """A tiny random VL-JEPA with a random Y-decoder, saved (for ``--smoke``)."""
    import torch

    from jepa_lightning.encoders import TextEncoder, VisionEncoder
    from jepa_lightning.inference import PretrainedVLJEPA
    from jepa_lightning.models.vl_jepa import VLJEPAModel
    from jepa_lightning.models.y_decoder import YDecoder

    torch.manual_seed(0)
    vit = {"model_type": "vit", "image_size": 32, "patch_size": 16, "hidden_size": 32}
    vit.update(num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    bert = {"model_type": "bert", "hidden_size": 32, "num_hidden_layers": 1}
    bert.update(num_attention_heads=2, intermediate_size=64, max_position_embeddings=64)
    llama = {"model_type": "llama", "hidden_size": 32, "intermediate_size": 64}
    llama.update(num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2, vocab_size=8)
    core = VLJEPAModel(
        VisionEncoder(vit, image_mean=[0.5] * 3, image_std=[0.5] * 3),
        TextEncoder(bert, tokenizer="jepa_lightning:bert-base-uncased"),
        embed_dim=16,
        predictor_lm=llama,
    )
    # The decoder's vocabulary is its tokenizer's.
    decoder_lm = {k: v for k, v in llama.items() if k != "vocab_size"} | {
        "tie_word_embeddings": True
    }
    decoder = YDecoder(decoder_lm, embed_dim=16, prefix_length=2, max_length=4)
    PretrainedVLJEPA(core, decoder=decoder).save_pretrained(folder)
    return str(folder)


def run(args: Any, model: str, output: Path) -> dict[str, Any]:
    from jepa_lightning.streams.evaluate import decode_streams

    if args.smoke:
        sizes: dict[str, Any] = {
            "num_streams": 2,
            "num_frames": 40,
            "min_scene": 8,
            "max_scene": 16,
            "budgets": [1, 2, 5],
            "thresholds": [0.001, 0.5],
        }
    else:
        sizes = {"num_streams": args.num_streams, "num_frames": args.num_frames}
    return decode_streams(model, str(output), quiet=True, **sizes)


def main() -> None:
    p = common.parser(__doc__.split("\n", 1)[0], repeats=1)
    p.add_argument("--model", help="the captioner: an export folder with a Y-decoder")
    p.add_argument("--num_streams", type=int, default=20)
    p.add_argument("--num_frames", type=int, default=600)
    p.add_argument("--output", type=Path, default=None, help="decode-streams folder (plot...)")
    args = p.parse_args()
    common.setup(args)
    if not args.smoke and not args.model:
        p.error("--model is required (an export with a Y-decoder), or --smoke")
    with tempfile.TemporaryDirectory() as scratch:
        model = args.model or tiny_captioner(Path(scratch) / "captioner")
        output = args.output or Path(scratch) / "decode_streams"
        result = run(args, model, output)
    uniform = sorted(result["curves"]["uniform"], key=lambda point: point["decodes"])
    header = ["uniform decodes", "uniform ROUGE-L"]
    for method in ("cluster", "change"):
        header += [f"{method} decodes", f"{method} x fewer"]
    rows = []
    for index, point in enumerate(uniform):
        row = [f"{point['decodes']:.0f}", f"{point['rougeL']:.3f}"]
        for method in ("cluster", "change"):
            saved = result["savings"][method][index]
            needed = f"{saved['decodes_needed']:.1f}" if "ratio" in saved else "-"
            row += [needed, ratio_text(saved)]
        rows.append(row)
    headlines = []
    for method in ("cluster", "change"):
        best = result["savings"][method][-1]  # at uniform decoding's largest budget
        ratio = best.get("ratio", 0.0)
        headlines.append(
            common.headline(
                f"{method}: x fewer decodes at uniform's ROUGE-L {best['rougeL']:.3f} "
                f"({best['decodes']:.0f} decodes)",
                ratio,
                goal=f">= {PAPER_RATIO}" if method == "cluster" else None,
                met=ratio >= PAPER_RATIO if method == "cluster" else None,
            )
        )
    truth = result["truth"]
    headlines.append(
        common.headline(
            f"decoder ceiling: ROUGE-L of the true scenes ({truth['decodes']:.1f})", truth["rougeL"]
        )
    )
    common.write_result(
        args,
        "selective_decoding",
        "Selective (clustering, change detection) vs uniform decoding of shape streams: "
        "decodes at equal caption quality",
        header,
        rows,
        headlines,
        result,
    )


if __name__ == "__main__":
    main()
