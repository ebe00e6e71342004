"""fp32 vs fp16 vs int8-dynamic vs int8-static for one pruned model, measured in one run.

Exports a prune (or retrain) stage folder with the real export stage at fp32 (parity-gated),
derives the three reduced-precision copies with the same code `compress export` uses
(compress.export.precision.reduce_precision, same calibration), then measures in this process:
test accuracy scored by onnxruntime, file size, and latency at batch 1 and 16 of all four
models timed round-robin (compress.export.onnx.ort_latencies: CPU provider, 2 intra-op threads,
spinning off; medians). `--int8-variants` also scores int8-static under other quantizer settings
(per-channel x reduce_range), the evidence behind the defaults in compress/export/precision.py.

  .venv/bin/python bench/export_precision.py STAGE_DIR [--rounds 200] [--int8-variants]
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS_DIR, log, make_env, markdown_table, provenance, write_json  # noqa: E402

from compress.config import resolve  # noqa: E402
from compress.export.bench_table import LATENCY_BATCHES, ort_test_metrics  # noqa: E402
from compress.export.onnx import ort_latencies  # noqa: E402
from compress.export.precision import calibration_batches, reduce_precision  # noqa: E402
from compress.vocab import PRECISIONS  # noqa: E402
from compress.stages.artifacts import read_stage  # noqa: E402
from compress.stages.pipeline import run_one  # noqa: E402
from compress.stages.runner import load_data  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("stage_dir", type=Path)
    ap.add_argument("--rounds", type=int, default=200, help="round-robin timing rounds")
    ap.add_argument("--int8-variants", action="store_true")
    ap.add_argument("--out", type=Path, default=RESULTS_DIR / "export_precision.json")
    args = ap.parse_args()
    src = read_stage(args.stage_dir)
    cfg = resolve(src.record["config"], {"export": {"precision": "fp32", "benchmark": False}})
    data = load_data(cfg)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        rec = run_one("export", cfg, make_env(tmp / "runs"), src, tmp / "fp32")
        log(f"fp32 export: parity rel. error {rec['metrics']['parity_rel_error']:.2e}")
        calib = calibration_batches(data.train, cfg.export.calibration_batches,
                                    cfg.export.calibration_batch_size, cfg.seed)
        paths = {"fp32": tmp / "fp32" / "model.onnx"}
        for p in PRECISIONS[1:]:
            paths[p] = reduce_precision(paths["fp32"], tmp / f"{p}.onnx", p, calibration=calib,
                                        providers=cfg.export.providers)
        acc = {p: ort_test_metrics(path, data.test)["test_accuracy"] for p, path in paths.items()}
        sizes = {p: path.stat().st_size for p, path in paths.items()}
        lat = {}
        for batch in LATENCY_BATCHES:
            log(f"timing batch {batch}, {args.rounds} round-robin rounds")
            secs = ort_latencies(list(paths.values()), batch, tuple(data.in_shape),
                                 repeats=args.rounds)
            lat[batch] = dict(zip(paths, (s * 1e3 for s in secs)))
        variants = _int8_variants(paths["fp32"], calib, data, acc["fp32"]) \
            if args.int8_variants else None
    limit = cfg.export.max_accuracy_drop
    rows = [[p, f"{sizes[p]:,}", f"{acc[p]:.4f}", f"{acc[p] - acc['fp32']:+.4f}",
             "pass" if acc["fp32"] - acc[p] <= limit + 1e-12 else "FAIL",
             *[f"{lat[b][p]:.4f} (x{lat[b]['fp32'] / lat[b][p]:.2f})" for b in LATENCY_BATCHES]]
            for p in paths]
    table = markdown_table(["precision", "bytes", "test acc.", "change", f"gate {limit:g}",
                            *[f"latency b={b} ms (speedup)" for b in LATENCY_BATCHES]], rows)
    print(table)
    if variants:
        print(markdown_table(["int8-static per_channel", "reduce_range", "accuracy change"],
                             [[str(v["per_channel"]), str(v["reduce_range"]),
                               f"{v['change']:+.4f}"] for v in variants]))
    write_json(args.out, {"provenance": provenance(), "stage_dir": str(args.stage_dir),
                          "model": cfg.model, "data": cfg.data, "rounds": args.rounds,
                          "accuracy": acc, "bytes": sizes,
                          "latency_ms": {str(b): v for b, v in lat.items()},
                          "int8_static_variants": variants, "table": table})
    log(f"wrote {args.out}")


def _int8_variants(fp32: Path, calib, data, base: float) -> list[dict]:
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    from compress.export.onnx import silenced
    from compress.export.precision import _Reader
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for pc, rr in itertools.product([False, True], [False, True]):
            dest = Path(tmp) / f"v{pc}{rr}.onnx"
            with silenced():
                quantize_static(str(fp32), str(dest), _Reader(calib), quant_format=QuantFormat.QDQ,
                                per_channel=pc, reduce_range=rr, activation_type=QuantType.QUInt8,
                                weight_type=QuantType.QInt8)
            change = ort_test_metrics(dest, data.test)["test_accuracy"] - base
            out.append({"per_channel": pc, "reduce_range": rr, "change": change})
    return out


if __name__ == "__main__":
    main()
