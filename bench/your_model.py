"""Your model on your data: the image-folder flow a user runs, measured.

1. A plain PyTorch script (no compress) trains torchvision's resnet18 (or the user CNN of the
   tests, `--arch file`) on a PNG folder of scikit-learn's digits at 3x32x32 and saves its
   state dict.
2. For channel sparsity 0.3 and 0.5, `l1filter` imports it, prunes, fine-tunes for the same
   budget without and with distillation from the imported model (alpha 0.5, T 4), and exports.
   Reported: test accuracy of the imported model and of each pruned one, MACs ratio, and the
   onnxruntime batch-1 / batch-16 speedup of the shrunk model (round-robin medians, 2 threads).
3. Data: load rate vs training rate on the same folder at num_workers 2 (is loading the
   bottleneck?) and peak memory for 2k vs 20k images, with the functions of
   bench/data_stream.py.

  .venv/bin/python bench/your_model.py                 # ~25 min on 2 cores
  .venv/bin/python bench/your_model.py --quick         # smoke test
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))  # tests.*

import torch  # noqa: E402

from common import RESULTS_DIR, log, markdown_table, provenance, write_json  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", choices=["resnet18", "file"], default="resnet18")
    ap.add_argument("--epochs", type=int, default=10, help="the user's own training")
    ap.add_argument("--finetune", default="4ep", help="fine-tuning budget of every variant")
    ap.add_argument("--sparsities", default="0.3,0.5")
    ap.add_argument("--no-data", action="store_true", help="skip the loading/memory part")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", type=Path, default=None)
    return ap.parse_args(argv)


def user_training(folder: Path, work: Path, arch: str, epochs: int) -> float:
    """Step 1, as the user does it: the tests' plain-PyTorch script in a subprocess."""
    from tests.e2e.test_your_model_flow import MEAN, NET, STD, TRAIN
    (work / "net.py").write_text(NET)
    script = TRAIN.replace("MEAN", repr(MEAN)).replace("STD", repr(STD)).replace("EPOCHS", str(epochs))
    (work / "train.py").write_text(script)
    r = subprocess.run([sys.executable, "train.py", str(folder), arch, str(work / "w.pt")],
                       cwd=work, capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(r.stderr[-3000:])
    return json.loads(r.stdout.strip().splitlines()[-1])["test_accuracy"]


def compress_variant(folder: Path, work: Path, arch: str, sparsity: float, distill: bool,
                     finetune: str, tag: str) -> dict:
    from tests.e2e.test_your_model_flow import MEAN, STD
    model = "torchvision:resnet18" if arch == "resnet18" else f"file:{work / 'net.py'}:build"
    sets = ["data.name=imagefolder", f"data.root={folder}", f"data.mean={MEAN}", f"data.std={STD}",
            "data.num_workers=2", f"model.name={model}", f"model.weights={work / 'w.pt'}",
            f"method.sparsity={sparsity}", f"method.finetune={finetune}", "train.batch_size=64",
            "train.lr=0.001", "export.latency_rounds=30",
            *(["distill.alpha=0.5", "distill.temperature=4"] if distill else [])]
    argv = [sys.executable, "-m", "compress", "prune", "--method", "l1filter", "--no-track",
            "--json", "--out", str(work / tag), *[a for s in sets for a in ("--set", s)]]
    r = subprocess.run(argv, cwd=work, capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(f"{tag}: {r.stderr[-3000:]}")
    out = json.loads(r.stdout)
    ex = out["export_metrics"]
    return {"sparsity": sparsity, "distill": distill,
            "imported_test_accuracy": out["stages"]["import"]["metrics"]["test_accuracy"],
            "test_accuracy": out["metrics"]["test_accuracy"],
            "onnx_test_accuracy": ex.get("onnx_test_accuracy"),
            "macs_ratio": ex["table.dense.macs"] / ex["table.shrunk.macs"],
            "speedup_b1": ex.get("shrink_speedup_b1"), "speedup_b16": ex.get("shrink_speedup_b16"),
            "prune_seconds": out["stages"]["prune"].get("seconds")}


def data_part(folder: Path, work: Path, quick: bool) -> dict:
    import data_stream
    args = argparse.Namespace(steps=8 if quick else 40, rounds=2 if quick else 5)
    out = {"throughput": data_stream.throughput(folder, args)}
    small = data_stream.write_folder(work / "mem2k", 2000)
    large = data_stream.write_folder(work / "mem20k", 200 if quick else 20000)
    out["memory"] = {"2k": data_stream.peak_memory(small, work, "2k"),
                     "20k": data_stream.peak_memory(large, work, "20k")}
    return out


def main(argv=None) -> None:
    args = parse_args(argv)
    from tests.fixtures_data import write_digit_folder
    torch.set_num_threads(2)
    if args.quick:
        args.epochs, args.finetune, args.sparsities = 1, "1ep", "0.5"
    name = f"your_model_{args.arch}{'_quick' if args.quick else ''}.json"
    out = args.out or RESULTS_DIR / name
    result = {"provenance": provenance(), "args": {k: str(v) for k, v in vars(args).items()}}
    with tempfile.TemporaryDirectory(prefix="your-model-") as tmp:
        work = Path(tmp)
        folder = write_digit_folder(work / "digits", per_class=None)
        log(f"user training: {args.arch}, {args.epochs} epochs")
        result["user_test_accuracy"] = user_training(folder, work, args.arch, args.epochs)
        log(f"the user's own test accuracy: {result['user_test_accuracy']:.4f}")
        if not args.no_data:  # written as soon as measured: a later failure keeps it
            log("data loading and memory")
            result["data"] = data_part(folder, work, args.quick)
            write_json(out, result)
        result["variants"] = []
        for s in [float(v) for v in args.sparsities.split(",")]:
            for distill in (False, True):
                tag = f"s{s}-{'kd' if distill else 'plain'}"
                log(f"compress {tag}")
                result["variants"].append(compress_variant(folder, work, args.arch, s, distill,
                                                           args.finetune, tag))
                log(json.dumps(result["variants"][-1]))
                write_json(out, result)
    print(summary(result))


def summary(result: dict) -> str:
    rows = [[f"{v['sparsity']:.1f}", "yes" if v["distill"] else "no",
             f"{100 * v['imported_test_accuracy']:.2f}", f"{100 * v['test_accuracy']:.2f}",
             f"{v['macs_ratio']:.2f}x", f"{v['speedup_b1']:.2f}x", f"{v['speedup_b16']:.2f}x"]
            for v in result["variants"]]
    text = markdown_table(["channel sparsity", "distill", "imported acc %", "pruned acc %",
                           "MACs ratio", "ORT b1", "ORT b16"], rows)
    data = result.get("data")
    if data:
        t = data["throughput"]["median_images_per_s"]
        mem = data["memory"]
        text += (f"\nload {t['load_none']:.0f} img/s (standard augmentation "
                 f"{t['load_standard']:.0f}) vs training resnet18 {t['resnet18_memory']:.0f} img/s"
                 f" in memory, {t['resnet18_streamed']:.0f} streamed; peak RSS 2k "
                 f"{mem['2k']['self_mb']:.0f} MB vs 20k {mem['20k']['self_mb']:.0f} MB")
    return text


if __name__ == "__main__":
    main()
