"""`tensorslim export`: a student (or any supported model) -> an ONNX graph, the dense model or the
model in dynamic int8, checked against the model before it is kept."""

from __future__ import annotations

from pathlib import Path


def register(subparsers) -> None:
    from ..compress.export import FORMATS, MIN_COSINE, MIN_OPSET, TOLERANCE

    p = subparsers.add_parser(
        "export",
        allow_abbrev=False,
        help="a student as ONNX (checked in ONNX Runtime), as the dense model of its original class, or in int8",
        description="Export a model directory for serving. onnx: torch.onnx.export with dynamic batch and "
        "sequence axes (decoders also take and return their KV cache), then run in ONNX Runtime on inputs "
        "of several shapes against PyTorch. dense: the factors merged into the original class "
        "(save_pretrained; loads without tensorslim), reloaded and compared. fastest: the student with every "
        "projection whose dense matrix takes no more multiply-adds per token merged back (the choice recorded "
        "in its config; the form to serve a decoder at batch 1), reloaded and compared. int8: torch's dynamic int8 "
        "for CPU serving (factored projections as chains of int8 linear maps; model_int8.pt, loaded by "
        "tensorslim.load_model), compared by mean cosine similarity and reloaded. The numbers go to export.json; "
        "an export that fails its check writes nothing.",
    )
    p.add_argument("--model", required=True, type=Path, help="model directory (a student, or a dense model)")
    p.add_argument(
        "--format",
        required=True,
        choices=FORMATS,
        help="onnx: model.onnx; dense: a transformers model; fastest: the student, dense where that is cheaper; "
        "int8: model_int8.pt for CPU serving",
    )
    p.add_argument("--out", required=True, type=Path, help="directory to write")
    p.add_argument(
        "--opset",
        type=int,
        default=None,
        help=f"ONNX opset to write (from {MIN_OPSET}; default: torch.onnx's recommended one)",
    )
    p.add_argument(
        "--tolerance",
        type=float,
        default=None,
        help="onnx, dense, fastest: largest absolute difference from the model the export may show "
        f"(default: {TOLERANCE:g})",
    )
    p.add_argument(
        "--min-cosine",
        type=float,
        default=None,
        help="int8: lowest mean cosine similarity of the output vectors (a token's hidden state or logits, "
        f"a sequence's logits) to the float model's (default: {MIN_COSINE:g})",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace --out even if export did not write it (the old one stays until the new export is checked)",
    )
    p.set_defaults(func=run)


def run(args) -> None:
    from ..compress.export import export_to_dir

    record = export_to_dir(
        args.model,
        args.out,
        args.format,
        opset=args.opset,
        tolerance=args.tolerance,
        min_cosine=args.min_cosine,
        overwrite=args.overwrite,
    )
    check = record["check"]
    print(f"{'batch':>6}{'sequence':>10}{'past':>6}  max abs difference  cosine: mean     least  ({check['against']})")
    for case in check["cases"]:
        print(
            f"{case['batch']:>6}{case['sequence']:>10}{case['past_sequence']:>6}  "
            f"{case['max_abs_diff']:>18.2e}  {case['mean_cosine']:>12.6f}  {case['min_cosine']:.6f}"
        )
    if "weights_bytes" in record:
        size = record["weights_bytes"]
        print(f"weights on disk: {size['float32']:,} bytes (float) -> {size['int8']:,} bytes (int8)")
