"""``ai-node demo``: one synthetic patient followed over three studies, end to end.

:mod:`demo.followup.timepoints` draws the patient and its truth;
:mod:`demo.followup.run` sends the studies to a node (or starts one), waits for
each job, prints the tracks and RANO-BM responses beside the truth, and writes
the report.  Synthetic data only: not for clinical use.
"""
