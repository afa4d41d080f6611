"""Models in MLflow: a refit's run with its served model, and a logged model loaded back.

`mlflow.pytorch` logs and loads through MLflow's process-global tracking URI and active run;
these are the only places that set them, around one call each.
"""

from __future__ import annotations

from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Metric, Param

from search.tracking.tracker import EXPERIMENT_KIND, MAX_PARAM_LENGTH


class RefitRun:
    """A refit's MLflow run in the study's experiment (made if missing): its parameters, its
    per-epoch and final metrics, its served model; `end` ends it."""

    def __init__(self, tracking_uri: str, *, experiment: str, artifact_location: str | None,
                 run_name: str, tags: dict[str, str], params: dict[str, Any]) -> None:
        self.tracking_uri = tracking_uri
        self.client = MlflowClient(tracking_uri)
        found = self.client.get_experiment_by_name(experiment)
        experiment_id = found.experiment_id if found else self.client.create_experiment(
            experiment, artifact_location=artifact_location, tags=EXPERIMENT_KIND)
        self.run_id: str = self.client.create_run(experiment_id, run_name=run_name,
                                                  tags=tags).info.run_id
        self.client.log_batch(self.run_id, params=[
            Param(k, str(v)[:MAX_PARAM_LENGTH]) for k, v in params.items()])

    def log_metrics(self, metrics: dict[str, float], *, step: int = 0) -> None:
        self.client.log_batch(self.run_id, metrics=[
            Metric(k, float(v), 0, step) for k, v in metrics.items()])

    def log_model(self, model: Any, example: Any, *, register: str | None) -> str:
        """Log `model` (a torch module taking `example`, a numpy batch) with its signature;
        returns its model URI."""
        import mlflow
        import mlflow.pytorch
        import torch

        with torch.inference_mode():
            output = model(torch.from_numpy(example)).numpy()
        signature = mlflow.models.infer_signature(example, output)
        mlflow.set_tracking_uri(self.tracking_uri)
        # The fluent API refuses a run of another experiment than the process's active one,
        # which a caller (or an earlier refit of another study, in one process) may have set.
        mlflow.set_experiment(experiment_id=self.client.get_run(self.run_id).info.experiment_id)
        with mlflow.start_run(run_id=self.run_id):
            # A pickled module, not MLflow's default torch.export graph: the graph cannot
            # change device or mode, so it could not be trained further nor teach on a GPU.
            info = mlflow.pytorch.log_model(model, name="model", signature=signature,
                                            input_example=example,
                                            serialization_format="pickle",
                                            registered_model_name=register)
        return str(info.model_uri)

    def end(self, status: str) -> None:
        self.client.set_terminated(self.run_id, status=status)


def load_model(uri: str, tracking_uri: str) -> Any:
    """The PyTorch model logged at `uri` (runs:/, models:/ or a path), on the CPU."""
    import mlflow
    import mlflow.pytorch

    mlflow.set_tracking_uri(tracking_uri)  # where runs:/ and models:/ URIs are looked up
    return mlflow.pytorch.load_model(uri, map_location="cpu")
