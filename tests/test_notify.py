"""Webhook payloads, Slack blocks, signing and the delivery loop, against a real local receiver."""

from __future__ import annotations

import json
import socket
from typing import Any

from mlflow.webhooks.delivery import _generate_hmac_signature
from pytest_httpserver import HTTPServer
from structlog.testing import capture_logs
from werkzeug import Request, Response

from tests.support.mlflow_server import free_port
from tests.support.webhooks import SECRET, Sleeps, make_alert, make_event, verify
from watcher.model import Leaderboard, LeaderboardChanged, RankedRun
from watcher.notify.payloads import (
    SLACK_HEADER_MAX,
    SLACK_MAX_BLOCKS,
    SLACK_SECTION_MAX,
    alert_payload,
    leaderboard_payload,
    render,
    slack_message,
)
from watcher.notify.sender import (
    DELIVERY_ID_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    Sender,
    WebhookTarget,
    sign,
)

NOW = 1_767_225_600.0  # 2026-01-01T00:00:00Z


# --- payload -------------------------------------------------------------------------------


def test_json_payload_has_exactly_the_documented_fields_and_run_links() -> None:
    payload = leaderboard_payload(make_event(), ui_base_url="http://ui:5000/", now=NOW)
    assert list(payload) == [
        "event",
        "experiment_id",
        "experiment_name",
        "rule",
        "metric",
        "ascending",
        "top_n",
        "models",
        "changes",
        "ranked_runs",
        "unranked_runs",
        "timestamp",
    ]
    assert payload["event"] == "leaderboard.changed"
    assert payload["timestamp"] == "2026-01-01T00:00:00Z"
    assert payload["models"][0] == {
        "rank": 1,
        "run_id": "run0",
        "run_name": "trial-0",
        "value": 0.9,
        "url": "http://ui:5000/#/experiments/7/runs/run0",
    }
    assert payload["changes"] == {"new_leader": True, "entered": ["run0"], "left": ["gone1"]}
    assert (payload["ranked_runs"], payload["unranked_runs"], payload["top_n"]) == (3, 1, 10)
    json.loads(render("json", payload, ui_base_url=None))  # the body is plain JSON


def test_run_url_is_null_without_ui_base_url() -> None:
    payload = leaderboard_payload(make_event(), ui_base_url=None, now=NOW)
    assert [m["url"] for m in payload["models"]] == [None, None, None]


def test_alert_payload_has_exactly_the_documented_fields() -> None:
    payload = alert_payload(make_alert("stalled"), ui_base_url="http://ui:5000/", now=NOW)
    assert payload == {
        "event": "run.stalled",
        "experiment_id": "7",
        "experiment_name": "wf_xgboost_AAPL_f12_tr12m_te3m",
        "rule": "wf-xgboost",
        "run_id": "run9",
        "run_name": "trial-<9>",
        "status": "RUNNING",
        "last_activity": "2025-12-31T23:50:00Z",
        "url": "http://ui:5000/#/experiments/7/runs/run9",
        "timestamp": "2026-01-01T00:00:00Z",
    }
    failed = alert_payload(make_alert("failed", last_activity=None), ui_base_url=None, now=NOW)
    assert (failed["event"], failed["status"], failed["last_activity"], failed["url"]) == (
        "run.failed",
        "FAILED",
        None,
        None,
    )
    assert json.loads(render("json", failed, ui_base_url=None)) == failed


def test_slack_alert_is_one_line_with_a_link_to_the_run() -> None:
    payload = alert_payload(make_alert("failed"), ui_base_url="http://ui:5000", now=NOW)
    message = json.loads(render("slack", payload, ui_base_url="http://ui:5000"))
    assert list(message) == ["text"]
    text = message["text"]
    assert "\n" not in text
    assert "<http://ui:5000/#/experiments/7/runs/run9|trial-&lt;9&gt;>" in text
    assert "<http://ui:5000/#/experiments/7/runs|wf_xgboost_AAPL_f12_tr12m_te3m>" in text
    assert "failed (FAILED)" in text
    stalled = alert_payload(make_alert("stalled"), ui_base_url=None, now=NOW)
    text = json.loads(render("slack", stalled, ui_base_url=None))["text"]
    assert "<http" not in text
    assert "stalled" in text
    assert "2025-12-31T23:50:00Z" in text


# --- slack ---------------------------------------------------------------------------------

TEXT_TYPES = {"plain_text", "mrkdwn"}


def assert_text_object(obj: dict[str, Any], *, limit: int, types: set[str] = TEXT_TYPES) -> None:
    assert set(obj) <= {"type", "text", "emoji", "verbatim"}
    assert obj["type"] in types
    assert isinstance(obj["text"], str)
    assert 0 < len(obj["text"]) <= limit


def assert_slack_blocks(message: dict[str, Any]) -> None:
    """Slack's Block Kit rules for the blocks we use (header, section, divider, context)."""
    assert isinstance(message["text"], str)
    assert message["text"]
    blocks = message["blocks"]
    assert 0 < len(blocks) <= SLACK_MAX_BLOCKS
    for block in blocks:
        kind = block["type"]
        if kind == "header":
            assert set(block) == {"type", "text"}
            assert_text_object(block["text"], limit=SLACK_HEADER_MAX, types={"plain_text"})
        elif kind == "section":
            assert set(block) == {"type", "text"}
            assert_text_object(block["text"], limit=SLACK_SECTION_MAX)
        elif kind == "context":
            assert set(block) == {"type", "elements"}
            assert 0 < len(block["elements"]) <= 10
            for element in block["elements"]:
                assert_text_object(element, limit=SLACK_SECTION_MAX)
        else:
            assert block == {"type": "divider"}


def test_slack_message_is_valid_block_kit_with_links_to_runs() -> None:
    payload = leaderboard_payload(make_event(), ui_base_url="http://ui:5000", now=NOW)
    message = json.loads(render("slack", payload, ui_base_url="http://ui:5000"))
    assert_slack_blocks(message)
    assert message["blocks"][0]["type"] == "header"
    assert "trial-0" in message["text"]
    assert "New leader" in message["text"]
    board_text = "\n".join(b["text"]["text"] for b in message["blocks"] if b["type"] == "section")
    assert "<http://ui:5000/#/experiments/7/runs/run0|trial-0>" in board_text
    assert "<http://ui:5000/#/experiments/7/runs|wf_xgboost_AAPL_f12_tr12m_te3m>" in board_text
    assert all(b["text"]["type"] == "mrkdwn" for b in message["blocks"] if b["type"] == "section")


def test_slack_message_without_ui_has_no_links_and_escapes_run_names() -> None:
    event = make_event(1)
    board = event.board
    entry = RankedRun(rank=1, run_id="r", run_name="a<b>&c|d", value=1.0)
    event = LeaderboardChanged(
        board=Leaderboard(**{**board.__dict__, "entries": (entry,)}), new_leader=False, entered=(), left=()
    )
    message = slack_message(leaderboard_payload(event, ui_base_url=None, now=NOW), ui_base_url=None)
    assert_slack_blocks(message)
    text = json.dumps(message["blocks"])
    assert "<http" not in text
    assert "a&lt;b&gt;&amp;c" in text


def test_slack_message_for_a_long_board_stays_within_slack_limits() -> None:
    message = slack_message(
        leaderboard_payload(make_event(250), ui_base_url="http://ui", now=NOW), ui_base_url="http://ui"
    )
    assert_slack_blocks(message)
    assert "150 more" in json.dumps(message["blocks"])


# --- signing -------------------------------------------------------------------------------


def test_signature_matches_mlflows_own_webhook_signature() -> None:
    body = json.dumps({"x": "é"}, ensure_ascii=False)
    assert sign(SECRET, "d-1", "1767225600", body) == _generate_hmac_signature(
        SECRET, "d-1", "1767225600", body
    )


# --- delivery ------------------------------------------------------------------------------


def target(httpserver: HTTPServer, *, secret: str | None = SECRET, max_attempts: int = 3) -> WebhookTarget:
    return WebhookTarget(
        name="team", format="json", url=httpserver.url_for("/hook"), secret=secret, max_attempts=max_attempts
    )


def test_delivery_is_signed_and_verifiable(httpserver: HTTPServer) -> None:
    seen: list[Request] = []

    def handler(request: Request) -> Response:
        seen.append(request)
        return Response("ok")

    httpserver.expect_request("/hook", method="POST").respond_with_handler(handler)
    body = render("json", leaderboard_payload(make_event(), ui_base_url=None, now=NOW), ui_base_url=None)
    result = Sender(sleep=Sleeps(), clock=lambda: NOW).deliver(target(httpserver), body, "d-42")
    assert result.delivered
    assert result.attempts == 1
    assert result.status == 200
    [request] = seen
    assert request.headers[DELIVERY_ID_HEADER] == "d-42"
    assert request.headers[TIMESTAMP_HEADER] == "1767225600"
    assert request.headers["Content-Type"] == "application/json"
    assert verify(SECRET, request.headers, request.get_data())
    assert not verify("another secret", request.headers, request.get_data())
    assert json.loads(request.get_data())["event"] == "leaderboard.changed"


def test_no_signature_header_without_a_secret(httpserver: HTTPServer) -> None:
    httpserver.expect_request("/hook").respond_with_data("ok")
    assert Sender(sleep=Sleeps()).deliver(target(httpserver, secret=None), "{}", "d").delivered
    [(request, _)] = httpserver.log
    assert SIGNATURE_HEADER not in request.headers


def test_500_twice_then_200_is_delivered_once_with_one_delivery_id(httpserver: HTTPServer) -> None:
    for status in (500, 503, 200):
        httpserver.expect_ordered_request("/hook", method="POST").respond_with_data("x", status=status)
    sleeps = Sleeps()
    result = Sender(sleep=sleeps).deliver(target(httpserver), '{"a": 1}', "same-id")
    assert result.delivered
    assert result.attempts == 3
    assert sleeps.calls == [1.0, 2.0]
    requests = [r for r, _ in httpserver.log]
    assert len(requests) == 3
    assert {r.headers[DELIVERY_ID_HEADER] for r in requests} == {"same-id"}
    assert all(verify(SECRET, r.headers, r.get_data()) for r in requests)
    httpserver.check_assertions()


def test_retries_are_bounded_and_logged_per_attempt(httpserver: HTTPServer) -> None:
    httpserver.expect_request("/hook").respond_with_data("down", status=502)
    sleeps = Sleeps()
    with capture_logs() as logs:
        result = Sender(backoff=(0.5, 1.0), sleep=sleeps).deliver(
            target(httpserver, max_attempts=4), "{}", "d"
        )
    assert (result.outcome, result.attempts, result.status) == ("failed", 4, 502)
    assert len(httpserver.log) == 4
    assert sleeps.calls == [0.5, 1.0, 1.0]  # the last back-off step repeats
    assert [e["attempt"] for e in logs if e["event"] == "webhook_retry"] == ["1/4", "2/4", "3/4"]


def test_429_honours_retry_after(httpserver: HTTPServer) -> None:
    httpserver.expect_ordered_request("/hook").respond_with_data(
        "slow down", status=429, headers={"Retry-After": "3"}
    )
    httpserver.expect_ordered_request("/hook").respond_with_data("ok")
    sleeps = Sleeps()
    assert Sender(sleep=sleeps).deliver(target(httpserver), "{}", "d").delivered
    assert sleeps.calls == [3.0]


def test_client_error_is_rejected_without_retry(httpserver: HTTPServer) -> None:
    httpserver.expect_request("/hook").respond_with_data("bad", status=400)
    sleeps = Sleeps()
    result = Sender(sleep=sleeps).deliver(target(httpserver), "{}", "d")
    assert (result.outcome, result.attempts, result.status) == ("rejected", 1, 400)
    assert sleeps.calls == []


def test_connection_refused_is_retried_then_failed_without_leaking_the_url() -> None:
    url = f"http://127.0.0.1:{free_port()}/hooks/T000/B000/xoxb-very-secret-token"
    hook = WebhookTarget(name="team", format="slack", url=url, secret=SECRET)
    sleeps = Sleeps()
    with capture_logs() as logs:
        result = Sender(sleep=sleeps).deliver(hook, "{}", "d")
    assert result.outcome == "failed"
    assert result.attempts == 3
    assert result.status is None
    assert result.error
    assert result.error.startswith("ConnectError")
    assert sleeps.calls == [1.0, 2.0]
    dumped = repr(logs) + repr(result) + repr(hook)
    assert "xoxb-very-secret-token" not in dumped
    assert SECRET not in dumped


def test_timeout_counts_as_a_retryable_failure() -> None:
    """A receiver that accepts the connection and never answers is a timeout, retried."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # connections complete in the backlog; nothing ever reads or answers
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/"
        hook = WebhookTarget(name="team", format="json", url=url, timeout_seconds=0.2, max_attempts=2)
        result = Sender(sleep=Sleeps()).deliver(hook, "{}", "d")
    assert result.outcome == "failed"
    assert result.attempts == 2
    assert result.error
    assert "Timeout" in result.error
