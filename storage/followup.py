"""Follow-up record (issue 4): patients, studies, series, segmentation runs, lesions."""
