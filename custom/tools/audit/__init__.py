"""Label audit: which training labels are most likely wrong, from the NVUM memory of a run.

:mod:`.scores` (the scores, pure functions), :mod:`.audit` (``python -m custom.cli audit``: one
checkpoint), :mod:`.benchmark` (``python -m custom.cli audit_benchmark``: how well it finds the
synthetic set's flipped labels).
"""

from .audit import RANKINGS, audit, class_summary, read_checkpoint
from .benchmark import audit_benchmark, benchmark_metrics, benchmark_scores, plot_score_distributions
from .scores import calibrate_logits, confident_learning, detection_metrics, loss_score, memory_logits, memory_score
