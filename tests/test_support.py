"""The test harness itself: the proxy counts what reaches a real server."""

from uuid import uuid4

from mlflow import MlflowClient


def test_proxy_counts_tracking_calls_to_real_server(mlflow_server, counting_proxy):
    proxy = counting_proxy(mlflow_server.url)
    client = MlflowClient(tracking_uri=proxy.url)
    exp_id = client.create_experiment(f"support_proxy_{uuid4().hex[:8]}")
    run = client.create_run(exp_id)
    client.set_terminated(run.info.run_id)
    paths = [p for _, p in proxy.tracking_calls()]
    assert len(paths) == 3
    assert any("experiments/create" in p for p in paths)
    assert client.get_run(run.info.run_id).info.status == "FINISHED"
