import pytest

from proxy.admission import Admission
from proxy.errors import Overloaded


def test_bounds_in_all_and_per_endpoint() -> None:
    admission = Admission(max_total=3, max_per_endpoint=2)
    with admission.slot("a"), admission.slot("a"):
        with pytest.raises(Overloaded, match="endpoint 'a'") as exc:
            admission.check("a")
        assert exc.value.retry_after == 1 and exc.value.grpc_code == "RESOURCE_EXHAUSTED"
        with admission.slot("b"), pytest.raises(Overloaded, match="sidecar's limit"):
            admission.check("c")
    assert admission.total == 0
    assert "total=0/3" in repr(admission)


def test_slot_is_released_on_error() -> None:
    admission = Admission(max_total=1, max_per_endpoint=1)
    with pytest.raises(RuntimeError), admission.slot("a"):
        raise RuntimeError("boom")
    admission.check("a")
