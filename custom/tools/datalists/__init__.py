"""Data lists of the real datasets: one builder per source, one shared label-harmonisation table.

``python -m custom.cli build_datalist --dataset nih --scheme nih14 --metadata Data_Entry_2017_v2020.csv
--output nih.json.gz``
(bundle/docs/real_datasets.md).
"""

from .builders import BUILDERS, DATASET_SCHEMES, build, build_datalist
from .core import BuildError
