"""MODEL_URI -> a local saved-model directory (`model.pt` + `model.json`, see deeplab_core.checkpoint).

Accepted: a checkpoint or saved-model directory (local path or s3:// prefix), `runs:/<run id>[/path]`
(default path: the `deeplab_model` artifact that training logs) and `models:/<name>/<version>`,
`models:/<name>@<alias>` or `models:/<name>/latest` from the MLflow model registry.
"""
from __future__ import annotations

import os
import tempfile

from deeplab_core.checkpoint import MODEL_FILE, SPEC_FILE
from pipelines import storage

MODEL_ARTIFACT = "deeplab_model"


def _registry_version(model_uri: str):
    from mlflow.tracking import MlflowClient

    ref = model_uri[len("models:/"):]
    client = MlflowClient()
    if "@" in ref:
        name, alias = ref.split("@", 1)
        version = client.get_model_version_by_alias(name, alias)
    else:
        name, _, number = ref.partition("/")
        if number in ("", "latest"):
            versions = client.search_model_versions(f"name = '{name}'")
            if not versions:
                raise ValueError(f"{model_uri}: the registry has no versions of model '{name}'")
            version = max(versions, key=lambda v: int(v.version))
        else:
            version = client.get_model_version(name, number)
    return version


def model_run_id(model_uri: str) -> str | None:
    """The MLflow run a model URI comes from (runs:/, models:/), else None."""
    if model_uri.startswith("runs:/"):
        return model_uri[len("runs:/"):].strip("/").split("/")[0]
    if model_uri.startswith("models:/"):
        return _registry_version(model_uri).run_id
    return None


def download_model(model_uri: str, directory: str | None = None) -> str:
    """Fetch the saved model named by `model_uri`; returns a local directory. One-line ValueError
    naming the URI when it cannot be found or reached."""
    try:
        if model_uri.startswith(("models:/", "runs:/")):
            import mlflow

            uri = (f"runs:/{model_run_id(model_uri)}/{MODEL_ARTIFACT}" if model_uri.startswith("models:/")
                   else model_uri)
            if uri.rstrip("/").count("/") == 1:  # runs:/<id>
                uri = f"{uri.rstrip('/')}/{MODEL_ARTIFACT}"
            local = mlflow.artifacts.download_artifacts(artifact_uri=uri,
                                                        dst_path=directory or tempfile.mkdtemp(prefix="model-"))
        elif storage.is_s3(model_uri):
            local = directory or tempfile.mkdtemp(prefix="model-")
            for name in (MODEL_FILE, SPEC_FILE):
                with open(os.path.join(local, name), "wb") as f:
                    f.write(storage.read_bytes(storage.join(model_uri, name)))
        else:
            local = storage.absolute(model_uri)  # Ray workers run in other directories
    except ValueError:
        raise
    except Exception as e:  # MLflow, network and storage errors: the first line says it
        raise ValueError(f"model {model_uri}: cannot be fetched: {str(e).splitlines()[0][:300]}") from None
    if not os.path.isfile(os.path.join(local, SPEC_FILE)):
        raise ValueError(f"model {model_uri}: not a saved model (no {SPEC_FILE}; expected a checkpoint "
                         "directory, runs:/… or models:/…)")
    return local
