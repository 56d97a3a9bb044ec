"""Training time and model quality against the baselines, at two data sizes (shop scale 1 and 10).

Each scale is the project's own pipeline on the bench stack: ``etl.seed.seed`` into the
embedded shop database, ``etl.pipeline.run_etl`` into a local lake (both reused between
runs), then ``model_store.training.train`` with the default ``TrainSettings`` (early
stopping, one torch thread) into a scratch artifact folder, timed end to end (read the lake, fit,
evaluate, export). The quality figures come from the trainer's held-out test split:

- RMSE of the model against the RMSE of predicting the training mean (ratio < 1 is better);
- NDCG@10 and hit-rate@10 of the model's ranking against ranking by popularity (ratio > 1 is better).

Training is seeded, so the quality figures repeat exactly; the time varies with the machine's load.
One untimed fit at the first scale warms torch up (its first call in a process pays a start-up).
"""

from __future__ import annotations

import tempfile

from bench._harness import Figure, Report, prepared_model


def main(quick: bool) -> None:
    from infra.lake import latest_run
    from infra.objectstore import open_store
    from model_store.training import train
    from recsys.settings import TrainSettings

    scales = (1.0, 10.0)
    runs = {1.0: 2, 10.0: 1} if quick else {1.0: 3, 10.0: 2}
    report = Report("training", scale={"scales": list(scales), "runs": {str(k): v for k, v in runs.items()}})
    seconds: dict[float, Figure] = {}
    rows: dict[float, Figure] = {}
    for scale in scales:
        prepared = prepared_model(scale, train_model=False, load=False)
        lake_rows = latest_run(open_store(prepared.lake)).row_count
        times, epochs = [], []
        metrics: dict[str, float] = {}
        if scale == scales[0]:  # the first fit in a process also pays torch's start-up: not timed
            with tempfile.TemporaryDirectory(prefix="bench-train-") as artifacts:
                train(prepared.lake, artifacts, TrainSettings())
        for _ in range(runs[scale]):
            with tempfile.TemporaryDirectory(prefix="bench-train-") as artifacts:
                summary = train(prepared.lake, artifacts, TrainSettings())
            times.append(summary.seconds)
            epochs.append(float(summary.epochs_run))
            metrics = summary.metrics
        label = f"{scale:g}x"
        rows[scale] = report.add(Figure(f"{label}: training rows", "rows", [float(lake_rows)]))
        seconds[scale] = report.add(
            Figure(f"{label}: train time", "s", times, note="read, fit, evaluate, export")
        )
        report.add(Figure(f"{label}: epochs run", "", epochs, note="early stopping"))
        rmse = report.add(Figure(f"{label}: RMSE", "", [metrics["rmse"]]))
        base = report.add(Figure(f"{label}: RMSE mean baseline", "", [metrics["rmse_mean_baseline"]]))
        report.ratio(f"{label}: RMSE / mean baseline", rmse, base, note="< 1 beats the baseline")
        ndcg = report.add(Figure(f"{label}: NDCG@10", "", [metrics["ndcg_at_10"]]))
        p_ndcg = report.add(Figure(f"{label}: NDCG@10 popularity", "", [metrics["popular_ndcg_at_10"]]))
        report.ratio(f"{label}: NDCG@10 / popularity", ndcg, p_ndcg, note="> 1 beats the baseline")
        hit = report.add(Figure(f"{label}: hit@10", "", [metrics["hit_rate_at_10"]]))
        p_hit = report.add(Figure(f"{label}: hit@10 popularity", "", [metrics["popular_hit_rate_at_10"]]))
        report.ratio(f"{label}: hit@10 / popularity", hit, p_hit, note="> 1 beats the baseline")
    report.add(
        Figure(
            "train time 10x / 1x",
            "x",
            [seconds[10.0].median / seconds[1.0].median],
            reference="train time 1x",
            note=f"for {rows[10.0].median / rows[1.0].median:.1f}x the rows",
        )
    )
    report.print()
    print(f"  wrote {report.write()}")
