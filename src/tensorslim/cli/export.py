"""`tensorslim export`: a student (or any supported model) -> an ONNX graph or the dense model, checked
against the model before it is kept."""

from __future__ import annotations

from pathlib import Path


def register(subparsers) -> None:
    from ..compress.export import FORMATS, MIN_OPSET, TOLERANCE

    p = subparsers.add_parser(
        "export",
        allow_abbrev=False,
        help="a student as ONNX (checked in ONNX Runtime) or as the dense model of its original class",
        description="Export a model directory for serving. onnx: torch.onnx.export with dynamic batch and "
        "sequence axes (decoders also take and return their KV cache), then run in ONNX Runtime on inputs "
        "of several shapes against PyTorch. dense: the factors merged into the original class "
        "(save_pretrained; loads without tensorslim), reloaded and compared. The numbers go to "
        "export.json; an export above the tolerance fails and writes nothing.",
    )
    p.add_argument("--model", required=True, type=Path, help="model directory (a student, or a dense model)")
    p.add_argument("--format", required=True, choices=FORMATS, help="onnx: model.onnx; dense: a transformers model")
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
        default=TOLERANCE,
        help=f"largest absolute difference from the model the export may show (default: {TOLERANCE:g}, float32)",
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
        args.model, args.out, args.format, opset=args.opset, tolerance=args.tolerance, overwrite=args.overwrite
    )
    check = record["check"]
    print(f"{'batch':>6}{'sequence':>10}{'past':>6}  max abs difference ({check['against']})")
    for case in check["cases"]:
        print(f"{case['batch']:>6}{case['sequence']:>10}{case['past_sequence']:>6}  {case['max_abs_diff']:.2e}")
