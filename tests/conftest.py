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
    "test_results_web.py",  # ai-node web and headless Chromium
    "test_node_faults.py",  # full disks and database rebuilds
    "test_stress_fast.py",  # the fast stress campaigns
    "test_node_cli.py",  # every test runs the console script in a fresh interpreter
    "test_node_limits.py",  # slowloris sockets, bursts, hostile payloads against deadlines
    "test_node_tls.py",  # certificates and dcmtk over TLS
    "test_node_metrics.py",  # ai-node serve and its worker as processes
    "test_node_service.py",  # systemd-analyze
    "test_inference_synthetic.py",  # whole synthetic heads
    "test_results_validation.py",  # dciodvfy on every output kind, orientation and case
    "test_demo_followup_e2e.py",  # ai-node demo: three studies through the demo model
}

#: single tests that take more than a few seconds in otherwise quick modules
SLOW_TESTS = {
    "test_worker_crash_does_not_stop_the_receiver",
    "test_a_study_of_five_sequences_yields_exactly_one_job",
    "test_restart_resumes_timers_and_drops_nothing",
    "test_node_imports_neither_torch_nor_inference_at_import_time",
    "test_stopping_the_node_requeues_the_running_job",
    "test_io_error_gets_out_of_resources_and_leaves_no_partial_file",
    "test_no_lesion_sr_says_lesion_absent",
    "test_send_to_dcmtk_storescp",
    "test_late_instance_reopens_and_its_job_supersedes",
    "test_min_peak_probability_drops_unsure_components",
    "test_running_jobs_are_requeued_at_start_up_without_counting",
    "test_device_uid_is_made_once_per_installation",
    "test_aborted_association_waits_for_the_idle_timer",
    "test_sr_says_not_for_diagnostic_use_and_gives_confidence",
    "test_failure_status_backs_off_then_dies_then_retry_delivers",
    "test_no_lesion_gives_an_explicit_result",
    "test_plane_polygons_give_back_any_plane",
    "test_concurrent_associations",
    "test_idle_timer_completes_a_series_without_a_count",
    "test_every_output_is_written_whatever_the_source_character_set",
    "test_job_superseded_while_running_stays_superseded",
    "test_count_completes_on_release_across_associations",
    "test_failure_statuses_raise",
    "test_rerun_queues_a_new_job_for_the_series",
    "test_a_series_sent_again_after_its_job_failed_runs_again",
    # tests/demo: the MNI152 template (20-70 s to load), two fresh interpreters
    "test_lesions_lie_inside_the_brain_and_apart",
    "test_the_head_moves_between_studies",
    "test_ai_node_demo_is_a_subcommand",
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.name in SLOW_MODULES or (
            isinstance(item, pytest.Function) and item.originalname in SLOW_TESTS
        ):
            item.add_marker(pytest.mark.slow)
