"""Dense vs channel-pruned ONNX in onnxruntime, for real CNNs and a vision transformer, with and
without width rounding.

For each torchvision model (random init, 1000 classes, 3x224x224 input) and channel sparsity s:
  1. the `l1filter` method itself (coupled groups, Linear hidden units and attention heads
     included, as Torch-Pruning's default does, no fine-tuning) removes the fraction s of every
     prunable channel group by filter L1 norm: masked where a mask removes channels exactly,
     physically cut where it does not (convnext_tiny's LayerNorms);
  2. compress.core.shrink removes the dropped channels physically, keeping per group a
     multiple of `round_to` (1 = exact widths; 8 and 16 pad with dead channels, export.round=up);
     a physically cut model has no dead channels to pad with, so there l1filter itself keeps
     multiples of `round_to` (method.round_to); `lat` is export.round=latency: per group,
     exact / 8 / 16, whichever onnxruntime runs fastest here (compress.export.latency_widths);
  3. each variant is exported to ONNX and checked against the pruned PyTorch model.
All variants of a model (dense + sparsities x roundings) are timed round-robin in one process
with compress.export.onnx.ort_latencies (CPU provider, 2 intra-op threads, spinning off),
medians over --rounds rounds, at batch 1 and 16. The table: the MAC ratio (dense / this
variant's own MACs), the measured speedup, and their quotient (1.0 = the speedup the
multiply-adds promise). Goal: batch-16 quotient >= 0.8, and never slower than dense.

  .venv/bin/python bench/export_speed.py                          # 8 models, ~30-60 min
  .venv/bin/python bench/export_speed.py --models resnet18 --rounds 20
  .venv/bin/python bench/export_speed.py --quick                  # < 1 min smoke run
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from common import RESULTS_DIR, log, markdown_table, provenance, write_json  # noqa: E402

MODELS = ("resnet18", "resnet50", "vgg16_bn", "mobilenet_v2", "efficientnet_b0",
          "convnext_tiny", "resnext50_32x4d", "vit_b_16")
SPARSITIES = (0.3, 0.5, 0.7)
ROUNDINGS = ("1", "8", "16")


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--sparsities", default=",".join(map(str, SPARSITIES)))
    ap.add_argument("--round-to", default=",".join(ROUNDINGS),
                    help="comma-separated: a multiple, or lat (latency-aware widths)")
    ap.add_argument("--size", type=int, default=224, help="input height = width")
    ap.add_argument("--rounds", type=int, default=20, help="round-robin rounds at batch 16")
    ap.add_argument("--rounds-b1", type=int, default=60, help="round-robin rounds at batch 1")
    ap.add_argument("--threads", type=int, default=2, help="onnxruntime intra-op threads")
    ap.add_argument("--quick", action="store_true", help="resnet18 at 64x64, 3 rounds")
    ap.add_argument("--fresh", action="store_true", help="ignore results already in --out")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    if args.quick:
        args.models, args.size, args.rounds, args.rounds_b1 = "resnet18", 64, 3, 5
    args.models = args.models.split(",")
    args.sparsities = [float(s) for s in args.sparsities.split(",")]
    args.round_to = args.round_to.split(",")
    default = "export_speed_quick.json" if args.quick else "export_speed.json"
    args.out = args.out or RESULTS_DIR / default
    return args


def _context(model, example):
    from compress.core.masking import prunable_parameters
    from compress.core.masks import MaskSet
    from compress.data.base import DataBundle, Split
    from compress.methods.base import PruneContext
    split = Split(example, torch.zeros(len(example), dtype=torch.long))
    data = DataBundle("random", split, split, split, 1000, tuple(example.shape[1:]))
    return PruneContext(model, data, None, MaskSet.ones_like(prunable_parameters(model)), 0,
                        progress=False)


def channel_masks_at(name: str, sparsity: float, example: torch.Tensor, round_to: int = 1):
    """The model at dense init, pruned by l1filter at `sparsity` (masks applied, or cut), its
    masks and the result's channel density."""
    from compress.methods.structured.method import L1Filter, L1FilterParams
    from compress.models.base import build_model
    torch.manual_seed(0)
    model = build_model(f"torchvision:{name}", {}, tuple(example.shape[1:]), 1000).eval()
    params = L1FilterParams(sparsity=sparsity, coupled=True, linear=True, finetune="0ep",
                            round_to=round_to)
    result = L1Filter().run(params, _context(model, example))
    return model.eval(), result.masks, result


def _variant(name: str, s: float, r: str, example: torch.Tensor, pruned):
    """(shrunk module, spec, reference) of one rounding of one pruned model."""
    from compress.core.shrink import reference, shrink
    model, masks, result = pruned
    if result.architecture is not None and r not in ("1", "lat"):  # cut: the method rounds
        model, masks, result = channel_masks_at(name, s, example, int(r))
    widths = None
    if r == "lat":
        from compress.export.latency_widths import measured_widths
        widths = measured_widths(model, masks, example, rounds=5)
    net, spec = shrink(model, masks, example, round_to=1 if r == "lat" else int(r),
                       rounding="up", widths=widths)
    return net, spec, reference(model, spec, example), result


def variants(name: str, args, work: Path) -> tuple[list[dict], list[Path]]:
    """Every variant of one model exported to ONNX, parity-checked; rows and paths."""
    from compress.core.structure import count_macs
    from compress.export.onnx import check_parity, export_onnx
    from compress.models.base import build_model
    example = torch.randn(2, 3, args.size, args.size, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    dense = build_model(f"torchvision:{name}", {}, (3, args.size, args.size), 1000).eval()
    rows = [{"variant": "dense", "sparsity": 0.0, "round_to": None,
             "params": sum(p.numel() for p in dense.parameters()),
             "macs": count_macs(dense, example[:1])}]
    paths = [export_onnx(dense, example, work / f"{name}-dense.onnx")]
    rows[0]["onnx_bytes"] = paths[0].stat().st_size
    del dense
    for s in args.sparsities:
        pruned = channel_masks_at(name, s, example)
        for r in args.round_to:
            net, spec, ref, result = _variant(name, s, r, example, pruned)
            path = export_onnx(net, example, work / f"{name}-s{s}-r{r}.onnx")
            err = check_parity(path, ref, example, rtol=1e-4)
            pruning = result.info["pruning"]
            rows.append({"variant": f"s{s}-r{r}", "sparsity": s, "round_to": r,
                         "channel_density": result.info["channel_density"],
                         "channel_sparsity": pruning["achieved"].get("channel_sparsity"),
                         "physical": pruning["physical"],
                         "params": sum(p.numel() for p in net.parameters()),
                         "macs": count_macs(net, example[:1]),
                         "onnx_bytes": path.stat().st_size, "parity_rel_error": err,
                         "widths": {g["group"]: g["kept"] for g in spec.get("groups", [])}})
            paths.append(path)
            log(f"{name} s={s} round_to={r}: channel sparsity "
                f"{pruning['achieved'].get('channel_sparsity', 0):.2f}, MACs {rows[-1]['macs']:,}")
            del net, ref
        del pruned
        gc.collect()
    return rows, paths


def time_model(rows: list[dict], paths: list[Path], args) -> None:
    from compress.export.onnx import ort_latencies
    shape = (3, args.size, args.size)
    for batch, rounds in ((1, args.rounds_b1), (16, args.rounds)):
        secs = ort_latencies(paths, batch, shape, repeats=rounds, threads=args.threads, warmup=2)
        for row, t in zip(rows, secs):
            row[f"latency_b{batch}_ms"] = t * 1e3
    base = rows[0]
    for row in rows:
        row["mac_ratio"] = base["macs"] / row["macs"]
        for batch in (1, 16):
            row[f"speedup_b{batch}"] = base[f"latency_b{batch}_ms"] / row[f"latency_b{batch}_ms"]
            row[f"quotient_b{batch}"] = row[f"speedup_b{batch}"] / row["mac_ratio"]


def table(results: dict) -> str:
    header = ["model", "sparsity", "round_to", "channel sparsity", "MAC ratio", "speedup b1",
              "speedup b16", "b16 speedup / MAC ratio", "b16 ms"]
    out = []
    for name, rows in results.items():
        for r in rows:
            kept = "" if r["round_to"] is None else f"{r['channel_sparsity']:.2f}"
            out.append([name, r["sparsity"], r["round_to"] or "dense", kept,
                        f"{r['mac_ratio']:.2f}", f"{r['speedup_b1']:.2f}",
                        f"{r['speedup_b16']:.2f}", f"{r['quotient_b16']:.2f}",
                        f"{r['latency_b16_ms']:.1f}"])
    return markdown_table(header, out)


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    previous = {}
    if args.out.exists() and not args.fresh:  # one model per run (and lock) appends here
        previous = json.loads(args.out.read_text())
    payload = {"provenance": provenance(), "settings": {
        k: v for k, v in vars(args).items() if k != "out"}, "results": previous.get("results", {})}
    if previous:
        payload["earlier_runs"] = previous.get("earlier_runs", []) + [
            {"provenance": previous["provenance"], "models": list(previous["results"])}]
    with tempfile.TemporaryDirectory(prefix="export-speed-") as tmp:
        for name in args.models:
            if name in payload["results"]:
                continue
            work = Path(tmp) / name
            work.mkdir()
            rows, paths = variants(name, args, work)
            log(f"{name}: timing {len(paths)} models round-robin")
            time_model(rows, paths, args)
            payload["results"][name] = rows
            payload["provenance"]["loadavg_end"] = list(__import__("os").getloadavg())
            write_json(args.out, payload)
            for p in paths:
                p.unlink()
    print(table(payload["results"]))
    log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
