"""Suite-wide: which tests are slow (left out by ``make test-fast``).

Marked here, in one place, by module or by test, so the fast subset is chosen
from measured durations rather than spread over the files.
"""

from __future__ import annotations

import pytest

#: modules whose every test takes more than a few seconds on two cores
SLOW_MODULES = {
    "test_results_orthanc.py",  # a real Orthanc and ai-node serve, a model
    "test_node_crash.py",  # kill -9 rounds of ai-node serve
    "test_node_orthanc.py",  # a real Orthanc
    "test_inference_demo.py",  # the demo model on a whole brain
    "test_inference_brain_mask.py",  # deepbet on whole heads
    "test_inference_model.py",  # full-size UNETR in every format
    "test_results_task.py",  # the segmentation task, end to end
    "test_results_tracking.py",  # registrations, PostgreSQL
    "test_results_report.py",  # headless Chromium
    "test_node_faults.py",  # full disks and database rebuilds
    "test_stress_fast.py",  # the fast stress campaigns
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.name in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)
