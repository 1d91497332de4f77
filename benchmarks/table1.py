"""The EfficientBioAI paper's Table 1 on ebai's four reference tasks, measured on this machine.

Runs ``ebai report``: each task's shipped network is compressed (OpenVINO int8, and 50% of its
channels pruned + distilled + int8), every variant runs on a held-out synthetic volume with known
ground truth, and latency per tile (interleaved rounds), energy per tile (codecarbon, labelled
measured or estimated) and accuracy are printed side by side with PyTorch eager, OpenVINO f32 and
OpenVINO's default precision. GPU rows are added when the TensorRT backend is available.

    python benchmarks/table1.py --quick                     # all four tasks, a few minutes
    python benchmarks/table1.py --tasks denoising,semantic  # full settings
    python benchmarks/table1.py -o reports/table1 --overwrite

The report folder (default ``reports/table1``) holds README.md, results.json and PNG plots.
"""

from __future__ import annotations

import sys


def main() -> None:
    from ebai.tasks.cli import report

    args = sys.argv[1:]
    if not any(a in ("-o", "--output") or a.startswith("--output=") for a in args):
        args += ["-o", "reports/table1"]
    try:
        report.main(args=args, prog_name="benchmarks/table1.py", standalone_mode=True)
    except Exception as exc:  # ebai's own errors: one line, as the ebai command prints them
        from ebai.core.errors import EbaiError

        if isinstance(exc, EbaiError):
            sys.exit(f"error: {exc}")
        raise


if __name__ == "__main__":
    main()
