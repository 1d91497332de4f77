"""Child-process entry point that runs NVIDIA ModelOpt's ONNX PTQ (``python -m ebai.tensorrt._modelopt_run``).

ModelOpt patches ONNX Runtime's calibrators in the process that imports it (and imports torch), so
it runs in a child process: ONNX Runtime's own ``quantize_static`` keeps working in the parent.
Arguments: source ONNX, output ONNX, calibration ``.npy``, calibration method (``max``/``entropy``),
then the node names to leave unquantized as one JSON list.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np


def main(argv: list[str]) -> int:
    """Quantize ``argv[0]`` into ``argv[1]``; return the exit status."""
    src, dst, calib, method, excluded = argv
    from modelopt.onnx.quantization import quantize

    from ebai.tensorrt._onnx_io import read_io

    name = read_io(Path(src)).inputs[0].name
    quantize(
        onnx_path=src,
        quantize_mode="int8",
        calibration_data={name: np.load(calib)},
        calibration_method=method,
        calibration_eps=["cpu"],
        nodes_to_exclude=json.loads(excluded) or None,
        output_path=dst,
        high_precision_dtype="fp32",
        log_level="WARNING",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
