"""DVC stage `evaluate`: models/model.pt + test set -> reports/metrics.json, the confusion
matrix (DVC plot data and PNG) and per-class accuracy (reads evaluate.*, tracking.enabled)."""
from __future__ import annotations

import argparse
from pathlib import Path

from vitlens import plots, tracking
from vitlens.cifar import load_arrays
from vitlens.config import load_params
from vitlens.data import Normalizer, to_device
from vitlens.device import pick_device
from vitlens.errors import run_main
from vitlens.evaluation import confusion_rows, evaluate_logits, predict
from vitlens.io import write_csv, write_json
from vitlens.model import load_model


def run_evaluation(params_path: str, model_path: Path, data_path: Path, out_dir: Path,
                   metrics_path: Path) -> dict:
    params = load_params(params_path)
    device = pick_device("auto")
    model, rec = load_model(model_path, device)
    data = load_arrays(data_path)
    test = to_device(data.x_test, data.y_test, device)
    logits = predict(model, test, Normalizer(rec["mean"], rec["std"]),
                     params.evaluate.batch_size, device)
    ev = evaluate_logits(logits, test.y, data.classes)
    per_class = ev.per_class_accuracy()
    support = ev.confusion.sum(axis=1)

    write_json(metrics_path, ev.metrics())
    write_csv(out_dir / "confusion.csv", confusion_rows(data.y_test, ev.predictions, data.classes))
    write_csv(out_dir / "per_class.csv",
              [{"class": c, "accuracy": a, "support": int(n)}
               for (c, a), n in zip(per_class.items(), support)])
    plots.save_figure(plots.confusion_figure(ev.confusion, data.classes),
                      out_dir / "confusion.png")

    if params.tracking.enabled and rec["mlflow_run_id"]:
        run = tracking.open_run(rec["mlflow_run_id"])
        run.log_metrics({"test/accuracy": ev.accuracy, "test/loss": ev.loss,
                         **{f"test/accuracy/{c}": a for c, a in per_class.items()}})
        run.log_artifact(out_dir / "confusion.png", "figures")
        run.log_artifact(out_dir / "per_class.csv", "evaluation")
        run.log_artifact(metrics_path, "evaluation")
    print(f"test accuracy {ev.accuracy:.4f}, loss {ev.loss:.4f} on {len(test)} images "
          f"-> {metrics_path}")
    return ev.metrics()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--model", type=Path, default=Path("models/model.pt"))
    ap.add_argument("--data", type=Path, default=Path("data/cifar10.npz"))
    ap.add_argument("--out-dir", type=Path, default=Path("reports/eval"))
    ap.add_argument("--metrics", type=Path, default=Path("reports/metrics.json"))
    args = ap.parse_args()
    run_evaluation(args.params, args.model, args.data, args.out_dir, args.metrics)


if __name__ == "__main__":
    run_main(main)
