"""The test harness itself: the proxy counts what reaches a real server."""

from mlflow import MlflowClient


def test_proxy_counts_tracking_calls_to_real_server(sqlite_server, counting_proxy):
    proxy = counting_proxy(sqlite_server.url)
    client = MlflowClient(tracking_uri=proxy.url)
    exp_id = client.create_experiment("support_proxy_check")
    run = client.create_run(exp_id)
    client.set_terminated(run.info.run_id)
    paths = [p for _, p in proxy.tracking_calls()]
    assert len(paths) == 3
    assert any("experiments/create" in p for p in paths)
    assert client.get_run(run.info.run_id).info.status == "FINISHED"
