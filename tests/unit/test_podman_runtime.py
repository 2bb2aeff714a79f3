"""The Podman client's own behaviour, without a Podman service."""

import gc
import warnings

import pytest

from workers.podman_runtime import ContainerRuntimeError, PodmanRuntime


def test_a_podman_service_that_is_down_leaks_no_socket(tmp_path):
    runtime = PodmanRuntime(f"unix://{tmp_path}/podman.sock")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            with pytest.raises(ContainerRuntimeError):
                runtime.list_autoupdate_containers()
        runtime.close()
        gc.collect()
    assert [w for w in caught if issubclass(w.category, ResourceWarning)] == []
