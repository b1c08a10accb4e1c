"""Where MLflow keeps runs and models: the tracking URI, its client, the experiment."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

SQLITE = "sqlite:///"
PROJECT_ROOT = Path(__file__).resolve().parents[1]
# scheme://USERINFO@ : greedy up to the netloc's last '@' (a password may hold one)
_URL_USERINFO = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)[^/?#\s]*@")


def mask_url_credentials(text: str) -> str:
    """`text` with the userinfo of every URL in it masked: `http://user:pw@host` ->
    `http://***@host`. Every message that may hold a URL passes through it."""
    return _URL_USERINFO.sub(r"\1***@", text)


def absolute_tracking_uri(uri: str) -> str:
    """`sqlite:///relative.db` made absolute, so Ray workers with another cwd use the same file."""
    folder = sqlite_folder(uri)
    if folder is None or uri.startswith(SQLITE + "/"):
        return uri
    return SQLITE + str(Path(uri[len(SQLITE):]).resolve())


def sqlite_folder(uri: str) -> Path | None:
    """The folder of a local SQLite store (what every writer must see), or None for a server."""
    if not uri.startswith(SQLITE):
        return None
    return Path(uri[len(SQLITE):]).parent


def client(tracking_uri: str | None = None):
    """An `MlflowClient` whose model registry is the tracking store (SQLite file or http://)."""
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def use_store(tracking_uri: str) -> None:
    """Point MLflow's fluent API (`mlflow.log_model`, `models:/` URIs) at one store: its runs
    and its model registry. The one place that sets MLflow's global URIs."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)


def ensure_experiment(tracking_uri: str, name: str, artifact_root: str | Path) -> str:
    """Point MLflow's fluent API at `tracking_uri`; the id of experiment `name` (created if
    missing). With a local store the artifacts go to `artifact_root` (made absolute), so runs
    written from other working directories (Ray workers) find them."""
    import mlflow

    use_store(tracking_uri)
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    location = None
    if not tracking_uri.startswith(("http://", "https://", "databricks")):
        root = str(artifact_root)
        remote = "://" in root and not root.startswith("file://")
        location = root if remote else Path(root.removeprefix("file://")).resolve().as_uri()
    return mlflow.create_experiment(name, artifact_location=location)


def git_commit(cwd: Path = PROJECT_ROOT) -> str | None:
    """HEAD of the git checkout holding the code, or None outside a repository."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


class TrackingServerUnreachable(ConnectionError):
    """The MLflow tracking server did not answer; the message says where and what to do."""


def check_reachable(tracking_uri: str, timeout_s: float = 5.0) -> None:
    """Raise TrackingServerUnreachable unless an http(s) tracking server answers within
    `timeout_s` (MLflow's own client retries for minutes first). Local stores pass."""
    if not tracking_uri.startswith(("http://", "https://")):
        return
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(tracking_uri.rstrip("/") + "/health", timeout=timeout_s):
            return
    except urllib.error.HTTPError:
        return  # something answered (a proxy, an auth wall): the client will say more
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise TrackingServerUnreachable(mask_url_credentials(
            f"MLflow tracking server {tracking_uri} is not reachable ({reason}); start it "
            f"(`mlflow server --host HOST --port PORT`) or set mlflow.tracking_uri "
            "(default sqlite:///mlflow.db)"
        )) from None
