"""INT8 version of the axial model for ONNX Runtime on CPU.

    python -m spinegate.inference.training.quantize --out inference/models

Static quantisation (QDQ format, weights int8 per output channel,
activations uint8) of ``axial_muscle.onnx`` into ``axial_muscle.int8.onnx``.
Activation ranges come from tiles of the model's own training phantoms
(the seeds in its training record; T1, T2 and Dixon water), never from a
validation or calibration seed. On this 2-core CPU a 192² tile takes
~13 instead of ~20 ms, which takes the axial network off the turnaround's
critical path. The command then fits the INT8 file's own area calibration
(`inference.training.axial_calibration`, ~8 min), since quantisation moves the
boundaries by about a pixel. Needs the ``train`` extra (``onnx``).

Writes ``axial_muscle.int8.onnx``, ``axial_muscle.int8.quantization.json``
(source model checksum, method, the tiles used, the version) and
``axial_muscle.int8.calibration.json``.
"""
from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

import numpy as np

from spinegate.inference.training.axial_calibration import calibrate, run_model_command
from spinegate.inference.axial_classes import AXIAL_TILE
from spinegate.inference.training.axial_data import PHANTOM_CACHE, phantom_training_planes
from spinegate.inference.engine import load_model_info

__all__ = ["INT8_SUFFIX", "build_int8", "calibration_tiles", "quantize_axial"]

log = logging.getLogger("spinegate.inference.training.quantize")

INT8_SUFFIX = ".int8"
TILES_PER_SERIES = 2
TILE_SEED = 20261121


def calibration_tiles(phantom_seeds: tuple[int, ...], cache_dir: Path | None = PHANTOM_CACHE) -> list[np.ndarray]:
    """Network-input tiles (1, 1, rows, cols) from random slices and
    positions of each seed's T1, T2 and Dixon water series, read from the
    training cache (rendered there when missing: the same planes)."""
    from spinegate.dicom_io.classify import Weighting

    rng = np.random.default_rng(TILE_SEED)
    tiles = []
    for seed in phantom_seeds:
        for weighting in (Weighting.T1, Weighting.T2, Weighting.WATER):
            x, _ = phantom_training_planes(seed, weighting, cache_dir)
            for k in rng.choice(len(x), TILES_PER_SERIES, replace=False):
                r = int(rng.integers(0, x.shape[1] - AXIAL_TILE[0] + 1))
                c = int(rng.integers(0, x.shape[2] - AXIAL_TILE[1] + 1))
                tiles.append(x[k, r : r + AXIAL_TILE[0], c : c + AXIAL_TILE[1]][None, None].astype(np.float32))
    return tiles


def quantize_axial(model_dir: Path, model_name: str = "axial_muscle", cache_dir: Path | None = PHANTOM_CACHE) -> dict:
    """Write ``{model_name}.int8.onnx`` and its record; return the record."""
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    source = load_model_info(model_dir, model_name)
    training = json.loads((model_dir / f"{model_name}.training.json").read_text())
    seeds = tuple(int(s) for s in training["phantom_seeds"])
    tiles = calibration_tiles(seeds, cache_dir)
    input_name = ort.InferenceSession(str(source.path), providers=["CPUExecutionProvider"]).get_inputs()[0].name

    class Tiles(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(tiles)

        def get_next(self) -> dict[str, np.ndarray] | None:
            tile = next(self._it, None)
            return None if tile is None else {input_name: tile}

    target = model_dir / f"{model_name}{INT8_SUFFIX}.onnx"
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(source.path), str(prepared), skip_symbolic_shape=True)
        quantize_static(str(prepared), str(target), Tiles(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    record = {
        "version": f"{source.version}-int8",
        "source_model": source.path.name,
        "source_sha256": source.sha256,
        "method": "onnxruntime quantize_static, QDQ, weights int8 per channel, activations uint8, MinMax ranges",
        "onnxruntime": ort.__version__,
        "calibration_tiles": {"phantom_seeds": list(seeds), "contrasts": ["T1", "T2", "WATER"],
                              "tiles_per_series": TILES_PER_SERIES, "seed": TILE_SEED, "count": len(tiles)},
    }
    (model_dir / f"{model_name}{INT8_SUFFIX}.quantization.json").write_text(json.dumps(record, indent=1) + "\n")
    log.info("wrote %s from %s (%d calibration tiles)", target, source.path.name, len(tiles))
    return record


def build_int8(model_dir: Path, model_name: str = "axial_muscle", cache_dir: Path | None = PHANTOM_CACHE) -> dict:
    """Quantise ``model_name`` and fit the INT8 model's own area calibration
    (an INT8 file without one would run uncalibrated); return the
    quantisation record."""
    record = quantize_axial(model_dir, model_name, cache_dir)
    calibrate(model_dir, model_name + INT8_SUFFIX)
    return record


def main(argv: list[str] | None = None) -> int:
    return run_model_command(argv, "spinegate.inference.training.quantize", __doc__ or "", build_int8, "FP32 model file stem to quantise")


if __name__ == "__main__":
    raise SystemExit(main())
