"""Data: data lists (reading, validation, test lists of other datasets) and image transforms."""

from .datalist import DataList, DataListError, read_json
from .dicom import (ChestXrayDicomReader, DicomReadError, dicom_guard_enabled, guard_file, guard_reason, is_dicom,
                    read_dicom)
from .sources import open_datalist
from .real_datasets import DataListWithTests, real_datalist
from .transforms import (ChestXrayToTensord, ImageReadError, LoadImageChestXrayd, NormaliseChestXrayBatch,
                         RandResizedCropd)
