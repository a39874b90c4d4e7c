"""A second, separately written generator of brain MR series with metastases: the *shift set*.

Written apart from :mod:`demo.synthetic` (the training generator) so that an
evaluation on it can fail: it shares none of that package's appearance or
lesion code, only its DICOM writer (:mod:`demo.synthetic.dicom_series`).

- :mod:`demo.shift.tissue`: grey matter, white matter and CSF probability maps
  of the MNI152 2009 template (nilearn's wheel), mixed with their own
  intensities (a T1 post-contrast contrast unlike the template's), skull-stripped;
- :mod:`demo.shift.lesions`: its own lesion placer (ellipsoids, solid or
  ring-enhancing, perilesional oedema as a white-matter signal drop);
- :mod:`demo.shift.series`: a field of view up to twice the head with slices
  entirely above it, Rician noise over the whole field, a smooth coil-sensitivity
  field, partial volume across slices; writes ``dicom/``, ``truth_mask.nii.gz``,
  ``brain_mask.nii.gz`` and ``truth.json``.

Synthetic data only; never for clinical use.
"""
