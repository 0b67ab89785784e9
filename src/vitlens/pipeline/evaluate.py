"""The evaluate stage's work: a trained model on the test set -> metrics JSON, the confusion
matrix (DVC plot data and PNG), per-class accuracy and the most frequent confusions, logged
into the training run. The classes are the data's, however many."""
from __future__ import annotations

from pathlib import Path

from vitlens.config import load_params
from vitlens.data.imageset import ImageSet, load_arrays
from vitlens.data.split import to_device
from vitlens.errors import VitlensError
from vitlens.io import atomic_path, write_csv, write_json
from vitlens.model.trained import Trained, load_trained
from vitlens.plots.common import save_figure
from vitlens.plots.confusion import TOP_SHOWN, confusion_figure, top_confusions
from vitlens.train.evaluation import confusion_rows, evaluate_logits, split_logits

TOP_COLUMNS = ("true", "predicted", "count", "share")


def check_fits(trained: Trained, data: ImageSet, model_path: Path, data_path: Path) -> None:
    """A one-line error unless the model was trained on the data's classes, in its order, and
    on pictures of its size: another dataset's model would be scored against the wrong names."""
    if trained.classes != data.classes:
        raise VitlensError(f"{model_path} was trained on {len(trained.classes)} other classes than "
                           f"the {len(data.classes)} of {data_path}: rerun the train stage (dvc repro train)")
    if trained.image_size != data.image_size:
        raise VitlensError(f"{model_path} was trained on {trained.image_size}px pictures, {data_path} "
                           f"holds {data.image_size}px ones: rerun the train stage (dvc repro train)")


def write_top_confusions(path: Path, rows: list[dict]) -> None:
    """The most frequent confusions as CSV; a model without mistakes gets the header alone."""
    if rows:
        write_csv(path, rows)
    else:
        with atomic_path(path) as tmp:
            tmp.write_text(",".join(TOP_COLUMNS) + "\n")


def run_evaluation(params_path: str | Path, model_path: Path, data_path: Path, out_dir: Path,
                   metrics_path: Path) -> dict:
    """Evaluate `model_path` on the test split of `data_path`; returns the metrics written."""
    params = load_params(params_path)
    trained = load_trained(model_path)
    data = load_arrays(data_path)
    check_fits(trained, data, model_path, data_path)
    test = to_device(data.x_test, data.y_test, trained.device)
    logits = split_logits(trained.vit, test, trained.norm, params.evaluate.batch_size, trained.device,
                          bf16=trained.bf16)
    ev = evaluate_logits(logits, test.y, data.classes)
    per_class = ev.per_class_accuracy()
    support = ev.confusion.sum(axis=1)

    metrics = ev.metrics()
    if params.evaluate.flip_tta:  # beside the plain numbers, never instead of them
        tta = evaluate_logits(split_logits(trained.vit, test, trained.norm,
                                           params.evaluate.batch_size, trained.device, bf16=trained.bf16,
                                           flip=True),
                              test.y, data.classes)
        metrics.update(accuracy_flip_tta=tta.accuracy, loss_flip_tta=tta.loss)
    write_json(metrics_path, metrics)
    write_csv(out_dir / "confusion.csv", confusion_rows(data.y_test, ev.predictions, data.classes))
    write_csv(out_dir / "per_class.csv",
              [{"class": c, "accuracy": a, "support": int(n)}
               for (c, a), n in zip(per_class.items(), support)])
    write_top_confusions(out_dir / "top_confusions.csv", top_confusions(ev.confusion, data.classes, TOP_SHOWN))
    save_figure(confusion_figure(ev.confusion, data.classes), out_dir / "confusion.png")

    run = trained.run(params.tracking.enabled)
    if run is not None:
        run.log_metrics({"test/accuracy": ev.accuracy, "test/loss": ev.loss,
                         **{f"test/{k}": metrics[k] for k in ("accuracy_flip_tta",
                                                             "loss_flip_tta") if k in metrics},
                         **{f"test/accuracy/{c}": a for c, a in per_class.items()}})
        run.log_artifact(out_dir / "confusion.png", "figures")
        run.log_artifact(out_dir / "per_class.csv", "evaluation")
        run.log_artifact(out_dir / "top_confusions.csv", "evaluation")
        run.log_artifact(metrics_path, "evaluation")
    tta_line = (f" (flip TTA: {metrics['accuracy_flip_tta']:.4f}, {metrics['loss_flip_tta']:.4f})"
                if "accuracy_flip_tta" in metrics else "")
    print(f"test accuracy {ev.accuracy:.4f}, loss {ev.loss:.4f}{tta_line} on {len(test)} images "
          f"-> {metrics_path}")
    return metrics
