"""Every torchvision classifier through compress's channel pruning and through Torch-Pruning's
default pruner: does it shrink, by how much, with parity, and how fast in onnxruntime.

For each model of torchvision.models.list_models(module=torchvision.models) (random init,
never downloads; 10 classes; input 3xSxS, S = --size except where a builder needs more):
  compress  l1filter at channel sparsity 0.5 (the method's defaults: every group, heads too,
            physical surgery where a mask cannot remove channels exactly; plus linear=true,
            the hidden units of classifier MLPs, as Torch-Pruning prunes them; no fine-tuning),
            then the export's shrink (export defaults: widths rounded to 8 within a 10% MACs
            budget), ONNX with the default exporter, parity against the pruned PyTorch model;
  torch-pruning  tp.pruner.MetaPruner(model, example, GroupMagnitudeImportance(p=2),
            pruning_ratio=0.5, ignored_layers=[the output layer]) and pruner.step(): its
            documented basic use; ONNX (same exporter) and parity against the pruned model.
"works" = a smaller model whose ONNX agrees with PyTorch within --rtol. Each model's dense,
compress and Torch-Pruning ONNX files are timed round-robin at batch 16 (onnxruntime, CPU, 2
threads, spinning off, medians of --rounds); the table gives the MACs ratio (dense / pruned),
parity, b16 speedup and speedup / MACs ratio. Models above --max-params parameters are skipped
(memory and time on this 2-core machine); results are appended model by model to the JSON, so
an interrupted run resumes (--fresh starts over).

  .venv/bin/python bench/coverage.py                         # every model, ~1-2 h
  for m in $(python -c "import torchvision as t; print(*t.models.list_models(module=t.models))")
  do flock /tmp/compress-heavy.lock .venv/bin/python bench/coverage.py --models $m; done
  .venv/bin/python bench/coverage.py --models resnet18,vit_b_16 --rounds 10
  .venv/bin/python bench/coverage.py --quick                 # 3 small models, < 2 min
  .venv/bin/python bench/coverage.py --report                # the table of what ran so far
"""

from __future__ import annotations

import argparse
import copy
import gc
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from common import RESULTS_DIR, log, markdown_table, provenance, write_json  # noqa: E402

MIN_SIZE = {"inception_v3": 96, "maxvit_t": 224}  # the smallest inputs these builders take
QUICK = ("resnet18", "shufflenet_v2_x0_5", "mobilenet_v3_small")


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="all", help="comma-separated names, or all")
    ap.add_argument("--size", type=int, default=64, help="input height = width")
    ap.add_argument("--sparsity", type=float, default=0.5)
    ap.add_argument("--rounds", type=int, default=10,
                    help="round-robin rounds at batch 16 (0: no timing)")
    ap.add_argument("--rtol", type=float, default=1e-4, help="parity tolerance")
    ap.add_argument("--max-params", type=float, default=150e6)
    ap.add_argument("--threads", type=int, default=2, help="onnxruntime intra-op threads")
    ap.add_argument("--quick", action="store_true", help=f"{', '.join(QUICK)}, 3 rounds")
    ap.add_argument("--fresh", action="store_true", help="ignore results already in --out")
    ap.add_argument("--report", action="store_true",
                    help="only print the table and summary of the results in --out")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    if args.quick:
        args.models, args.rounds = ",".join(QUICK), 3
    default = "coverage_quick.json" if args.quick else "coverage.json"
    args.out = args.out or RESULTS_DIR / default
    return args


def _names(spec: str) -> list[str]:
    import torchvision
    every = torchvision.models.list_models(module=torchvision.models)
    return every if spec == "all" else spec.split(",")


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:240]


def _build(name: str, size: int) -> torch.nn.Module:
    from compress.models.base import build_model
    torch.manual_seed(0)
    return build_model(f"torchvision:{name}", {}, (3, size, size), 10).eval()


def _param_count(name: str, size: int) -> int:
    import torchvision

    from compress.models.torchvision_models import _builder_kwargs
    kwargs = _builder_kwargs(name, (3, size, size))
    try:
        with torch.device("meta"):
            model = torchvision.models.get_model(name, weights=None, num_classes=10, **kwargs)
    except NotImplementedError:  # an init that reads values (regnet): build for real
        model = torchvision.models.get_model(name, weights=None, num_classes=10, **kwargs)
    except Exception:  # an input size the builder refuses: the real build says why
        return 0
    return sum(p.numel() for p in model.parameters())


def _context(model, example):
    from compress.core.masking import prunable_parameters
    from compress.core.masks import MaskSet
    from compress.data.base import DataBundle, Split
    from compress.methods.base import PruneContext
    split = Split(example, torch.zeros(len(example), dtype=torch.long))
    data = DataBundle("random", split, split, split, 10, tuple(example.shape[1:]))
    return PruneContext(model, data, None, MaskSet.ones_like(prunable_parameters(model)), 0,
                        progress=False)


def run_compress(model, x, args, path: Path) -> dict:
    """l1filter at args.sparsity, the export's shrink, ONNX, parity."""
    from compress.core.shrink import reference, shrink
    from compress.core.structure import count_macs
    from compress.export.onnx import check_parity, export_onnx
    from compress.methods.structured.method import L1Filter, L1FilterParams
    started = time.perf_counter()
    result = L1Filter().run(L1FilterParams(sparsity=args.sparsity, linear=True, finetune="0ep"),
                            _context(model, x[:1]))
    net, spec = shrink(model, result.masks, x)
    if not spec.get("shrunk") and result.architecture is None:
        raise RuntimeError(f"nothing removed: {spec.get('reason')}")
    export_onnx(net, x, path)
    parity = check_parity(path, reference(model, spec, x), x, rtol=args.rtol)
    pruning = result.info["pruning"]
    return {"macs": count_macs(net, x[:1]), "params": sum(p.numel() for p in net.parameters()),
            "parity": parity, "physical": pruning["physical"],
            "channel_sparsity": pruning["achieved"].get("channel_sparsity"),
            "heads_sparsity": pruning["achieved"].get("heads_sparsity"),
            "left_whole": len(pruning["left_whole"]), "note": pruning.get("note"),
            "seconds": time.perf_counter() - started}


def _output_layer(model, x) -> list:
    """The layer producing the model's output (what Torch-Pruning's examples ignore)."""
    from compress.core.chgraph import OUTPUT, analyse
    graph = analyse(model, x[:1], "")
    modules = dict(model.named_modules())
    return [modules[n] for n, r in graph.whole.items() if r == OUTPUT and n in modules]


def run_torch_pruning(model, x, args, path: Path) -> dict:
    import torch_pruning as tp

    from compress.core.structure import count_macs
    from compress.export.onnx import check_parity, export_onnx
    started = time.perf_counter()
    ignored = _output_layer(model, x)
    pruner = tp.pruner.MetaPruner(model, x[:1], importance=tp.importance.GroupMagnitudeImportance(p=2),
                                  pruning_ratio=args.sparsity, ignored_layers=ignored)
    pruner.step()
    model.eval()
    export_onnx(model, x, path)
    parity = check_parity(path, model, x, rtol=args.rtol)
    return {"macs": count_macs(model, x[:1]), "params": sum(p.numel() for p in model.parameters()),
            "parity": parity, "seconds": time.perf_counter() - started}


def _attempt(fn, *args) -> dict:
    try:
        return {"works": True, **fn(*args)}
    except Exception as e:  # every failure is a result here
        return {"works": False, "error": _one_line(e),
                "where": traceback.extract_tb(e.__traceback__)[-1].name}


def run_model(name: str, args, work: Path) -> dict:
    from compress.core.structure import count_macs
    from compress.export.onnx import export_onnx, ort_latencies
    size = max(args.size, MIN_SIZE.get(name, 0))
    params = _param_count(name, size)
    if params > args.max_params:  # counted on the meta device: nothing allocated
        return {"model": name, "size": size, "params": params,
                "skipped": f"{params / 1e6:.0f}M parameters > --max-params"}
    try:
        dense = _build(name, size)
    except Exception as e:  # e.g. vit_h_14: 14x14 patches do not tile 64x64
        return {"model": name, "size": size, "skipped": f"cannot build: {_one_line(e)}"}
    row: dict = {"model": name, "size": size, "params": params}
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    row["macs"] = count_macs(dense, x[:1])
    paths = {"dense": work / f"{name}-dense.onnx"}
    export_onnx(dense, x, paths["dense"])
    row["compress"] = _attempt(run_compress, copy.deepcopy(dense), x, args,
                               work / f"{name}-compress.onnx")
    row["torch_pruning"] = _attempt(run_torch_pruning, copy.deepcopy(dense), x, args,
                                    work / f"{name}-tp.onnx")
    del dense
    gc.collect()
    if not args.rounds:  # --rounds 0: coverage and parity only
        for key in ("compress", "torch_pruning"):
            if row[key]["works"]:
                row[key]["macs_ratio"] = row["macs"] / row[key]["macs"]
        return row
    timed = ["dense"] + [k for k in ("compress", "torch_pruning") if row[k]["works"]]
    files = [paths["dense"]] + [work / f"{name}-{'compress' if k == 'compress' else 'tp'}.onnx"
                                for k in timed[1:]]
    secs = ort_latencies(files, 16, (3, size, size), repeats=args.rounds, threads=args.threads,
                         warmup=2)
    row["latency_b16_ms"] = secs[0] * 1e3
    for key, t in zip(timed[1:], secs[1:]):
        r = row[key]
        r["latency_b16_ms"] = t * 1e3
        r["macs_ratio"] = row["macs"] / r["macs"]
        r["speedup_b16"] = secs[0] / t
        r["speedup_per_macs"] = r["speedup_b16"] / r["macs_ratio"]
    for f in work.glob(f"{name}-*.onnx"):
        f.unlink()
    return row


def _cell(r: dict | None) -> list[str]:
    if not r:
        return ["", "", "", ""]
    if not r["works"]:
        return [f"no: {r['error'][:70]}", "", "", ""]
    speed = f"{r['speedup_b16']:.2f} / {r['speedup_per_macs']:.2f}" if "speedup_b16" in r else ""
    return ["yes", f"{r['macs_ratio']:.2f}", f"{r['parity']:.1e}", speed]


def table(results: dict) -> str:
    header = ["model", "input", "compress works?", "MACs ratio", "parity", "b16 speedup / per MACs",
              "Torch-Pruning works?", "MACs ratio", "parity", "b16 speedup / per MACs"]
    rows = []
    for name, r in results.items():
        if "skipped" in r:
            rows.append([name, r["size"], f"skipped: {r['skipped'][:70]}", "", "", "", "", "",
                         "", ""])
            continue
        rows.append([name, r["size"], *_cell(r.get("compress")), *_cell(r.get("torch_pruning"))])
    return markdown_table(header, rows)


def summary(results: dict) -> dict:
    done = [r for r in results.values() if "skipped" not in r]
    out = {"models": len(results), "run": len(done), "skipped": len(results) - len(done)}
    for key in ("compress", "torch_pruning"):
        ok = [r[key] for r in done if r[key]["works"]]
        out[key] = {"works": len(ok), "fails": len(done) - len(ok)}
    out["compress_only"] = sorted(r["model"] for r in done if r["compress"]["works"]
                                  and not r["torch_pruning"]["works"])
    out["torch_pruning_only"] = sorted(r["model"] for r in done if r["torch_pruning"]["works"]
                                       and not r["compress"]["works"])
    return out


def main(argv=None) -> None:
    import json
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    previous = {}
    if args.out.exists() and not args.fresh:
        previous = json.loads(args.out.read_text()).get("results", {})
    if args.report:
        print(table(previous))
        print(summary(previous))
        return
    payload = {"provenance": provenance(), "settings": {
        k: str(v) for k, v in vars(args).items() if k != "out"}, "results": previous}
    with tempfile.TemporaryDirectory(prefix="coverage-") as tmp:
        for name in _names(args.models):
            if name in payload["results"] and args.models == "all":
                continue  # resuming; a model named on the command line runs again
            log(f"{name}: pruning, exporting, timing")
            run = provenance()  # per model: a long run is many processes, one lock each
            payload["results"][name] = {**run_model(name, args, Path(tmp)), "run": {
                k: run[k] for k in ("command", "date", "loadavg_start", "git_head") if k in run}}
            r = payload["results"][name]
            log(f"{name}: compress {'ok' if r.get('compress', {}).get('works') else 'no'}, "
                f"torch-pruning {'ok' if r.get('torch_pruning', {}).get('works') else 'no'}")
            payload["summary"] = summary(payload["results"])
            payload["provenance"]["loadavg_end"] = list(os.getloadavg())
            write_json(args.out, payload)
            gc.collect()
    print(table(payload["results"]))
    print(payload.get("summary"))
    log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
