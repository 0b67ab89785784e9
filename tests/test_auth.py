"""A team server with authentication (mlflow server --app-name basic-auth) on 127.0.0.1: a
request without credentials gets 401, the tracking code turns missing, wrong or unpermitted
credentials into one line before any training, and the right ones log a run."""
import sys

import pytest
import requests

from conftest import copy_store, free_port, serve_and_wait

pytest.importorskip("flask_wtf", reason="the auth app needs mlflow[auth] (Flask-WTF)")
pytestmark = pytest.mark.slow
ADMIN_PASSWORD = "a-Strong-pass-4-tests"


@pytest.fixture(scope="module")
def server(tmp_path_factory, migrated_db):
    root = tmp_path_factory.mktemp("auth-server")
    ini = root / "auth.ini"
    ini.write_text(f"[mlflow]\ndefault_permission = READ\ndatabase_uri = sqlite:///{root / 'users.db'}\n"
                   "admin_username = admin\nauthorization_function = "
                   "mlflow.server.auth:authenticate_request_basic_auth\n")
    port = free_port()
    env = {"MLFLOW_AUTH_CONFIG_PATH": str(ini), "MLFLOW_AUTH_ADMIN_PASSWORD": ADMIN_PASSWORD,
           "MLFLOW_FLASK_SERVER_SECRET_KEY": "test-secret", "MLFLOW_DISABLE_TELEMETRY": "true"}
    cmd = [sys.executable, "-m", "mlflow", "server", "--app-name", "basic-auth",
           "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
           "--backend-store-uri", f"sqlite:///{copy_store(migrated_db, root)}",
           "--artifacts-destination", str(root / "artifacts")]
    url = f"http://127.0.0.1:{port}"
    with serve_and_wait(cmd, f"{url}/health", 90, env=env, log=root / "server.log"):
        yield url


@pytest.fixture
def as_user(monkeypatch, server):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")

    def use(user, password):
        for name, value in (("MLFLOW_TRACKING_USERNAME", user), ("MLFLOW_TRACKING_PASSWORD", password)):
            if value is None:
                monkeypatch.delenv(name, raising=False)
            else:
                monkeypatch.setenv(name, value)
    return use


def test_a_request_without_credentials_gets_401(server):
    assert requests.get(f"{server}/api/2.0/mlflow/experiments/search?max_results=1", timeout=10).status_code == 401


def test_missing_or_wrong_credentials_are_one_line_before_training(as_user):
    from vitlens.errors import VitlensError
    from vitlens.tracking import runs

    for user, password, says in ((None, None, "it needs credentials"),
                                 ("admin", "wrong-password", "the credentials were refused")):
        as_user(user, password)
        with pytest.raises(VitlensError) as e:
            runs.create_run("auth-tests", None, {})
        msg = str(e.value)
        assert says in msg and "\n" not in msg and "MLFLOW_TRACKING_PASSWORD" in msg
        assert "wrong-password" not in msg and ADMIN_PASSWORD not in msg


def test_the_right_credentials_log_a_run_and_others_cannot_read_it(as_user, server):
    from vitlens.errors import VitlensError
    from vitlens.tracking import runs

    as_user("admin", ADMIN_PASSWORD)
    run = runs.create_run("auth-tests", "with-credentials", {"k": "v"})
    run.log_params({"train.lr": 0.001})
    run.log_metrics({"val/accuracy": 0.5}, step=1)
    run.finish("FINISHED")
    assert runs.run_params(run.id)[0] == {"train": {"lr": 0.001}}

    from mlflow.server.auth.client import AuthServiceClient

    admin = AuthServiceClient(server)  # as admin: the credentials are in the environment
    admin.create_user("bob", "bob-Pass-12345")
    exp = runs.client().get_experiment_by_name("auth-tests").experiment_id
    admin.grant_user_permission("bob", "experiment", exp, "DENY")
    as_user("bob", "bob-Pass-12345")
    with pytest.raises(VitlensError, match="user 'bob' is not allowed"):
        runs.open_run(run.id)
