"""The demo: the source document's pipeline as one workflow.

load a real data set (scikit-learn's handwritten digits, shipped with the
package) -> preprocess -> train several model families and settings in
parallel -> evaluate each on held-out validation data -> pick the best and
run inference on the test set -> report.

Run it with ``accord demo`` (:mod:`accord.cli.demo`); each step is a task,
so ``accord tasks RUN_ID`` shows where each ran and how long it took.
"""

from __future__ import annotations

import pickle
import time
from typing import Any

import accord

app = accord.App("demo")

# (family, settings) pairs trained in parallel.
CANDIDATES: list[tuple[str, dict[str, Any]]] = [
    ("logistic_regression", {"C": 0.1}),
    ("logistic_regression", {"C": 1.0}),
    ("svm_rbf", {"C": 1.0, "gamma": 0.001}),
    ("svm_rbf", {"C": 10.0, "gamma": 0.01}),
    ("random_forest", {"n_estimators": 100, "max_depth": 10}),
    ("k_nearest_neighbours", {"n_neighbors": 3}),
    ("mlp", {"hidden_layer_sizes": [64], "max_iter": 300}),
]


def _model(family: str, params: dict[str, Any], seed: int) -> Any:
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.neural_network import MLPClassifier
    from sklearn.svm import SVC

    if family == "logistic_regression":
        return LogisticRegression(max_iter=2000, **params)
    if family == "svm_rbf":
        return SVC(kernel="rbf", **params)
    if family == "random_forest":
        return RandomForestClassifier(random_state=seed, n_jobs=1, **params)
    if family == "k_nearest_neighbours":
        return KNeighborsClassifier(**params)
    if family == "mlp":
        sizes = tuple(params.get("hidden_layer_sizes", [64]))
        return MLPClassifier(
            hidden_layer_sizes=sizes, max_iter=params.get("max_iter", 300), random_state=seed
        )
    raise ValueError(f"unknown model family {family!r}")


@app.task(retries=2)
def load_data(seed: int) -> dict[str, Any]:
    """Load the digits and split them into train, validation and test sets."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x_rest, x_test, y_rest, y_test = train_test_split(
        digits.data, digits.target, test_size=0.2, random_state=seed, stratify=digits.target
    )
    x_train, x_val, y_train, y_val = train_test_split(
        x_rest, y_rest, test_size=0.25, random_state=seed, stratify=y_rest
    )
    return {
        "x_train": x_train,
        "y_train": y_train,
        "x_val": x_val,
        "y_val": y_val,
        "x_test": x_test,
        "y_test": y_test,
    }


@app.task
def preprocess(data: dict[str, Any]) -> dict[str, Any]:
    """Scale features with statistics of the training set only."""
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(data["x_train"])
    return {
        **data,
        "x_train": scaler.transform(data["x_train"]),
        "x_val": scaler.transform(data["x_val"]),
        "x_test": scaler.transform(data["x_test"]),
    }


@app.task(retries=1, timeout=600)
def train(data: dict[str, Any], family: str, params: dict[str, Any], seed: int) -> dict[str, Any]:
    """Fit one candidate model; the fitted model travels as pickled bytes."""
    started = time.perf_counter()
    model = _model(family, params, seed).fit(data["x_train"], data["y_train"])
    return {
        "family": family,
        "params": params,
        "model": pickle.dumps(model),
        "train_seconds": time.perf_counter() - started,
    }


@app.task
def evaluate(data: dict[str, Any], trained: dict[str, Any]) -> dict[str, Any]:
    """Score a trained model on the validation set."""
    model = pickle.loads(trained["model"])
    accuracy = float((model.predict(data["x_val"]) == data["y_val"]).mean())
    return {**trained, "val_accuracy": accuracy}


@app.task
def infer(data: dict[str, Any], scored: list[dict[str, Any]]) -> dict[str, Any]:
    """Pick the model with the best validation accuracy; predict the test set."""
    best = max(scored, key=lambda s: s["val_accuracy"])
    model = pickle.loads(best["model"])
    predictions = model.predict(data["x_test"])
    return {
        "family": best["family"],
        "params": best["params"],
        "test_accuracy": float((predictions == data["y_test"]).mean()),
        "test_size": len(predictions),
        "predictions": [int(p) for p in predictions[:20]],
    }


@app.task
def report(scored: list[dict[str, Any]], chosen: dict[str, Any]) -> dict[str, Any]:
    """The run's value: every candidate's scores and the chosen model's test result."""
    rows = [
        {
            "family": s["family"],
            "params": s["params"],
            "val_accuracy": s["val_accuracy"],
            "train_seconds": s["train_seconds"],
        }
        for s in sorted(scored, key=lambda s: -s["val_accuracy"])
    ]
    return {"models": rows, "best": chosen}


@app.workflow
def pipeline(seed: int = 0) -> Any:
    """The whole pipeline; returns the report task's handle (its value is the run's)."""
    data = preprocess.submit(load_data.submit(seed))
    scored = [
        evaluate.submit(data, train.submit(data, family, params, seed))
        for family, params in CANDIDATES
    ]
    chosen = infer.submit(data, scored)
    return report.submit(scored, chosen)
