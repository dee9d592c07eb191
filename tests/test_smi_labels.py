"""Stage merging and label schemes."""
import numpy as np
import pytest

from maml_jax.smi import labels
from maml_jax.smi.errors import SMIDataError


def test_paper_merge_reproduces_the_paper_counts():
  stages = np.repeat(np.arange(1, 12), [188, 145, 277, 68, 10, 48, 75, 2, 11, 29, 12])
  merged = labels.merge_stages(stages)
  assert np.bincount(merged, minlength=6)[1:].tolist() == [333, 345, 58, 88, 41]
  assert len(merged) == 865


def test_user_mapping_parsed_and_applied():
  m = labels.parse_mapping("1,2,3:1; 4:2")
  assert m == {1: 1, 2: 1, 3: 1, 4: 2}
  assert labels.merge_stages(np.array([4, 1, 3]), m).tolist() == [2, 1, 1]


@pytest.mark.parametrize("text, msg", [("1,2:1;2:2", "mapped twice"), ("1:1;2:3", "without gaps"),
                                       ("1-2", "cannot read")])
def test_bad_mappings(text, msg):
  with pytest.raises(SMIDataError, match=msg):
    labels.parse_mapping(text)


def test_stage_outside_mapping_names_the_file_and_row():
  with pytest.raises(SMIDataError, match=r"labels\.csv: stage 12 \(row 2\) is outside the mapping"):
    labels.merge_stages(np.array([1, 12]), where="labels.csv")


def test_stages_from_age():
  got = labels.stages_from_age(np.array([10, 84, 85, 130, 300]), [84, 120, 168])
  assert got.tolist() == [1, 2, 2, 3, 4]
  with pytest.raises(SMIDataError, match="increasing"):
    labels.stages_from_age(np.array([1.0]), [120, 84])
