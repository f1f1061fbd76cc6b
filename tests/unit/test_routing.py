import pytest

from proxy.routing import Route, invocation_url, match


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/serving-endpoints/fraud-ro/invocations", Route("fraud-ro")),
        ("/serving-endpoints/fraud_ro2/invocations?x=1", Route("fraud_ro2")),
        ("/serving-endpoints/a/served-models/a-1/invocations", Route("a", "a-1")),
    ],
)
def test_invocation_paths_match(path: str, expected: Route) -> None:
    assert match(path) == expected


@pytest.mark.parametrize(
    "path",
    [
        "/serving-endpoints/../api/2.0/serving-endpoints/invocations",
        "/serving-endpoints/a%2Fb/invocations",
        "/serving-endpoints/a%2fb/invocations",
        "/serving-endpoints/%2e%2e/invocations",
        "/serving-endpoints//invocations",
        "//serving-endpoints/a/invocations",
        "/serving-endpoints/a/invocations/",
        "/serving-endpoints/a/served-models/../invocations",
        "/serving-endpoints/a/served-models//invocations",
        "/api/2.0/serving-endpoints/a",
        "/serving-endpoints/a",
        "/serving-endpoints/" + "x" * 65 + "/invocations",
    ],
)
def test_path_tricks_do_not_match(path: str) -> None:
    assert match(path) is None


def test_served_model_url_derives_from_the_resolved_url() -> None:
    base = "https://h:1/123/serving-endpoints/e/invocations"
    assert invocation_url(base, None) == base
    assert invocation_url(base, "m-1") == "https://h:1/123/serving-endpoints/e/served-models/m-1/invocations"
