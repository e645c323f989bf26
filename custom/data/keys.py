"""Item keys that the inference data path sets and its readers (the writers, heatmaps, the out-of-distribution gate)
check: one definition below both."""

#: item key of :class:`custom.serving.InferenceDataset`: why the item's image could not be read ("" when it could).
READ_ERROR = "read_error"
#: item key: why the item's image was refused unread or unscored (a link out of the input folder, a degenerate
#: image with ``degenerate_images='refuse'``; "" when it was not). Set by :func:`custom.serving.list_inputs` for links.
REFUSED = "refused"
#: item key of :class:`custom.serving.InferenceDataset`: why the scored image is questionable (a degenerate
#: image; "" when not).
INPUT_WARNING = "input_warning"
